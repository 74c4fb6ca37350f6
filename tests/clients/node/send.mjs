// Sends an identify, a track and an Order Completed to the gateway with Segment's official
// Node library (@segment/analytics-node), pointed at the gateway with its `host` option, then
// flushes and closes the client. Writes what it sent (with the library's own messageIds) as JSON
// to --out, for tests/clients/check.py. Exits 1 if the library reports any delivery error.
//
//   node send.mjs --host http://127.0.0.1:PORT --write-key KEY --run RUN_ID --out FILE

import { Analytics } from '@segment/analytics-node'
import { writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'

function args() {
  const out = {}
  const argv = process.argv.slice(2)
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) {
      throw new Error(`usage: send.mjs --host URL --write-key KEY --run ID --out FILE (at ${argv[i]})`)
    }
    out[argv[i].slice(2)] = argv[i + 1]
  }
  for (const k of ['host', 'write-key', 'run', 'out']) {
    if (!out[k]) throw new Error(`missing --${k}`)
  }
  return out
}

const a = args()
const version = createRequire(import.meta.url)('@segment/analytics-node/package.json').version
const analytics = new Analytics({
  writeKey: a['write-key'],
  host: a.host,
  flushAt: 15,
  flushInterval: 500,
  maxRetries: 3,
  httpRequestTimeout: 10000,
})

const errors = []
analytics.on('error', (err) => errors.push(`emitter: ${err?.reason ?? err?.message ?? String(err)}`))

const sent = []
// Each call's callback gets the event as the library finally sent it (messageId included).
function call(kind, method, params, expect) {
  return new Promise((resolve) => {
    analytics[method](params, (err, ctx) => {
      if (err) errors.push(`${kind}: ${err?.reason ?? err?.message ?? String(err)}`)
      sent.push({ kind, messageId: ctx?.event?.messageId, ...expect })
      resolve()
    })
  })
}

const run = a.run
const users = {
  identify: `${run}-node-identify`,
  track: `${run}-node-track`,
  order: `${run}-node-order`,
}
const traits = { email: `${users.identify}@example.com`, firstName: 'Ann', plan: 'pro' }
const trackProps = { title: 'Intro', position: 42 }
const products = [
  { product_id: 'p-1', sku: 'SKU-1', name: 'Mug', price: 12.5, quantity: 2, category: 'Kitchen' },
  { product_id: 'p-2', sku: 'SKU-2', name: 'Tea', price: 15, quantity: 1, category: 'Pantry' },
]
const order = { order_id: `${run}-node-o1`, total: 40, currency: 'USD', products }

const pending = [
  call('identify', 'identify', { userId: users.identify, traits }, { userId: users.identify, traits }),
  call(
    'track',
    'track',
    { userId: users.track, event: 'Video Played', properties: trackProps },
    { userId: users.track, event: 'Video Played', properties: trackProps },
  ),
  call(
    'order',
    'track',
    {
      userId: users.order,
      event: 'Order Completed',
      properties: order,
      context: { traits: { email: `${users.order}@example.com` } },
    },
    { userId: users.order, event: 'Order Completed', order_id: order.order_id, total: order.total, products },
  ),
]

await analytics.closeAndFlush({ timeout: 30000 })
await Promise.race([Promise.all(pending), new Promise((r) => setTimeout(r, 1000))])
if (sent.length < 3) errors.push(`only ${sent.length} of 3 events were reported as sent`)

writeFileSync(
  a.out,
  JSON.stringify({ client: 'node', library: `@segment/analytics-node ${version}`, events: sent, errors }, null, 2),
)
for (const e of errors) console.error(`node client error: ${e}`)
console.log(`node (@segment/analytics-node ${version}): sent ${sent.length} events, ${errors.length} errors`)
process.exit(errors.length ? 1 : 0)
