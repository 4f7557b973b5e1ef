// Drives one tenant through tenantproxy with knex and prints what it saw as
// JSON on stdout; test/proxy_node_test.go makes the assertions.
// Usage: node knex.js  (env.js's TP_* variables)
'use strict';
const path = require('path');
const { conn, mark, ddl, run } = require('./env');
const knex = require('knex')({ client: 'pg', connection: conn, pool: { min: 0, max: 2 } });

run(async () => {
  const out = {};
  try {
    // Without DDL the rows go to the chat schema's users table, which the
    // app's migrations installed.
    let table = 'users';
    let column = 'username';
    if (ddl) {
      const migrations = 'knex_migrations_' + mark;
      const [batch, log] = await knex.migrate.latest({ directory: path.join(__dirname, 'migrations'), tableName: migrations });
      out.migrated = { batch, log: log.map((f) => path.basename(f)) };
      table = 'knex_notes_' + mark;
      column = 'body';
    }
    await knex(table).insert({ [column]: 'knex-' + mark + '-1' });
    await knex.transaction(async (trx) => {
      await trx(table).insert({ [column]: 'knex-' + mark + '-2' });
    });
    try {
      await knex.transaction(async (trx) => {
        await trx(table).insert({ [column]: 'knex-' + mark + '-rolled-back' });
        throw new Error('roll back');
      });
    } catch (e) {
      if (e.message !== 'roll back') throw e;
    }
    const rows = await knex(table).select(column).where(column, 'like', 'knex-%').orderBy(column);
    out.rows = rows.map((r) => r[column]);
    return out;
  } finally {
    await knex.destroy();
  }
});
