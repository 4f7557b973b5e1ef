// Drives one tenant's pg-boss queue through tenantproxy and prints what it
// saw as JSON on stdout; test/proxy_node_test.go makes the assertions.
// pg-boss installs its schema itself (start() with migrate: CREATE
// SCHEMA, partitioned tables, PL/pgSQL functions) under a
// transaction-scoped advisory lock, creates a queue (a partition made by
// its create_queue function), sends jobs and fetches them with
// SELECT … FOR UPDATE SKIP LOCKED, as its workers do.
// Usage: node pgboss.js  (env.js's TP_* variables)
'use strict';
const PgBoss = require('pg-boss');
const { conn, mark, run } = require('./env');

run(async () => {
  const boss = new PgBoss({ ...conn, max: 2, supervise: false, schedule: false });
  boss.on('error', (e) => process.stderr.write(String(e && e.stack ? e.stack : e) + '\n'));
  await boss.start();
  try {
    const queue = 'jobs';
    await boss.createQueue(queue);
    for (let i = 1; i <= 3; i++) {
      await boss.send(queue, { mark: mark + '-' + i });
    }
    // Two workers' fetches at once, on the pool's two connections: SKIP
    // LOCKED gives each jobs the other has not locked; a third fetch
    // finds the queue empty.
    const batches = await Promise.all([boss.fetch(queue, { batchSize: 2 }), boss.fetch(queue, { batchSize: 2 })]);
    const jobs = batches.flat();
    await boss.complete(queue, jobs.map((j) => j.id));
    const rest = await boss.fetch(queue, { batchSize: 10 });
    // One job left queued, which no later run of another tenant may see.
    await boss.send(queue, { mark: mark + '-left' });
    return {
      ids: jobs.map((j) => j.id),
      seen: jobs.map((j) => j.data.mark).sort(),
      rest: rest.length,
    };
  } finally {
    await boss.stop({ graceful: false, wait: true });
  }
});
