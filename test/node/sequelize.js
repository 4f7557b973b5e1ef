// Drives one tenant through tenantproxy with Sequelize and prints what it
// saw as JSON on stdout; test/proxy_node_test.go makes the assertions.
// Usage: node sequelize.js  (env.js's TP_* variables)
'use strict';
const { Sequelize, DataTypes } = require('sequelize');
const { conn, mark, ddl, run } = require('./env');

const sequelize = new Sequelize(conn.database, conn.user, conn.password, {
  host: conn.host,
  port: conn.port,
  dialect: 'postgres',
  logging: false,
  pool: { min: 0, max: 2 },
});

// With DDL the model's table is Sequelize's own, made by sync(); without,
// the model maps the chat schema's users table.
const Row = ddl
  ? sequelize.define('Note', { body: { type: DataTypes.TEXT, allowNull: false } }, { tableName: 'sequelize_notes_' + mark })
  : sequelize.define('User', {
    id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
    username: { type: DataTypes.TEXT, allowNull: false },
  }, { tableName: 'users', timestamps: false });
const column = ddl ? 'body' : 'username';

run(async () => {
  const out = {};
  try {
    await sequelize.authenticate();
    if (ddl) {
      await Row.sync();
      out.synced = true;
    }
    await Row.create({ [column]: 'sequelize-' + mark + '-1' });
    await sequelize.transaction(async (transaction) => {
      await Row.create({ [column]: 'sequelize-' + mark + '-2' }, { transaction });
    });
    try {
      await sequelize.transaction(async (transaction) => {
        await Row.create({ [column]: 'sequelize-' + mark + '-rolled-back' }, { transaction });
        throw new Error('roll back');
      });
    } catch (e) {
      if (e.message !== 'roll back') throw e;
    }
    const rows = await Row.findAll({
      attributes: [column],
      where: { [column]: { [Sequelize.Op.like]: 'sequelize-%' } },
      order: [[column, 'ASC']],
    });
    out.rows = rows.map((r) => r.get(column));
    return out;
  } finally {
    await sequelize.close();
  }
});
