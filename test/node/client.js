// Drives one tenant through tenantproxy with node-postgres and prints what
// it saw as JSON on stdout; test/proxy_node_test.go makes the assertions.
// Usage: node client.js  (TP_HOST, TP_PORT, TP_USER, TP_PASSWORD, TP_MARK)
'use strict';
const { Client } = require('pg');

async function main() {
  const client = new Client({
    host: process.env.TP_HOST,
    port: Number(process.env.TP_PORT),
    user: process.env.TP_USER,
    password: process.env.TP_PASSWORD,
    database: 'chat',
  });
  await client.connect();
  const out = {};
  const mark = process.env.TP_MARK;

  const user = await client.query('INSERT INTO users (username) VALUES ($1) RETURNING id', ['node-' + mark]);
  const uid = user.rows[0].id;
  const chan = await client.query("INSERT INTO channels (name, created_by) VALUES ('node', $1) RETURNING id", [uid]);
  const cid = chan.rows[0].id;
  // A named statement: node-postgres parses it once per connection and
  // binds it by name afterwards.
  for (let i = 0; i < 3; i++) {
    await client.query({
      name: 'post-message',
      text: 'INSERT INTO messages (channel_id, author_id, body) VALUES ($1, $2, $3)',
      values: [cid, uid, `${mark} node ${i}`],
    });
  }
  const bodies = await client.query('SELECT body FROM messages ORDER BY id');
  out.bodies = bodies.rows.map((r) => r.body);

  await client.query('BEGIN');
  try {
    await client.query('SELECT 1/0');
  } catch (e) {
    out.divisionError = e.code;
  }
  await client.query('ROLLBACK');

  try {
    await client.query('SET ROLE postgres');
  } catch (e) {
    out.setRoleError = e.code;
  }
  const after = await client.query('SELECT count(*)::int AS n FROM messages');
  out.countAfterRefusal = after.rows[0].n;
  await client.end();
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
