DROP TABLE todo_tags;
DROP TABLE tags;
