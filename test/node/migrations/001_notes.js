// knex.js's one migration; the table name carries the run's mark so each
// pool mode migrates afresh in the same tenant.
'use strict';

const table = () => 'knex_notes_' + process.env.TP_MARK;

exports.up = (knex) => knex.schema.createTable(table(), (t) => {
  t.increments('id');
  t.text('body').notNullable();
});

exports.down = (knex) => knex.schema.dropTable(table());
