DROP TABLE messages, channel_members, channels, users;
