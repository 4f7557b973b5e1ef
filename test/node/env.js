// What knex.js and sequelize.js share: the tenant's connection from the
// environment test/proxy_node_test.go sets, and one way to report.
'use strict';

const conn = {
  host: process.env.TP_HOST,
  port: Number(process.env.TP_PORT),
  user: process.env.TP_USER,
  password: process.env.TP_PASSWORD,
  database: 'chat',
};

// mark tells this run's rows apart from other tenants' and runs'; ddl says
// whether the tenant may create tables, which decides between the
// library's own schema tools and the chat schema the migrations installed.
const mark = process.env.TP_MARK;
const ddl = process.env.TP_DDL === '1';

// run prints what body returned as JSON for the Go test to judge, or the
// error's stack on stderr with a failing exit.
function run(body) {
  body().then(
    (out) => process.stdout.write(JSON.stringify(out)),
    (e) => {
      process.stderr.write(String(e && e.stack ? e.stack : e) + '\n');
      process.exit(1);
    },
  );
}

module.exports = { conn, mark, ddl, run };
