// A local Storacha upload service for tests: the real service handlers of @storacha/upload-api
// (its in-memory test context: blob/add with storage nodes, upload/add, upload/list, ...) behind HTTP
// on 127.0.0.1. Every listener the context opens is forced onto 127.0.0.1.
//
//   node server.mjs            prints one JSON line {"url","did"} when ready, serves until killed
//
//   POST /                      a UCAN agent message (the service endpoint the client talks to)
//   GET  /receipt/<task CID>    the agent message holding that task's receipt (the client polls it)
//   POST /test/provision        {"space": did}: provision a space for a test customer (what
//                               `storacha space provision` does through email sign-up, which cannot
//                               run here)
//   GET  /test/uploads          {"<space>": ["<root CID>", ...]} what each space has uploaded
import http from 'node:http'
import dns from 'node:dns'
import { createContext } from '@storacha/upload-api/test/context'
import { createServer } from '@storacha/upload-api'
import { delegate } from '@ucanto/core'
import * as Signer from '@ucanto/principal/ed25519'

dns.setDefaultResultOrder('ipv4first')

// The context's servers call listen(callback): bind them to 127.0.0.1 instead of every interface.
const localHttp = {
  ...http,
  createServer: (...args) => {
    const server = http.createServer(...args)
    const listen = server.listen.bind(server)
    server.listen = (...rest) =>
      typeof rest[0] === 'function' ? listen(0, '127.0.0.1', rest[0]) : listen(...rest)
    return server
  },
}

const context = await createContext({ http: localHttp, requirePaymentPlan: false })
const service = createServer(context)

// Receipts by task CID, from every agent message the service stores (its memory store indexes them
// but keeps no bytes to serve).
const receipts = new Map()
const store = context.agentStore.messages
const write = store.write.bind(store)
store.write = async (message) => {
  for (const [task] of message.data.receipts) receipts.set(`${task}`, message.source)
  return write(message)
}

const customer = 'did:mailto:test.storacha.network:pinfs'
const provisioner = await Signer.generate()

async function readBody(request) {
  const chunks = []
  for await (const chunk of request) chunks.push(chunk)
  return Buffer.concat(chunks)
}

async function handle(request, response) {
  const url = new URL(request.url, 'http://127.0.0.1')
  if (request.method === 'POST' && url.pathname === '/') {
    const body = await readBody(request)
    const out = await service.request({ headers: request.headers, body: new Uint8Array(body) })
    response.writeHead(out.status ?? 200, out.headers)
    return response.end(Buffer.from(out.body))
  }
  if (request.method === 'GET' && url.pathname.startsWith('/receipt/')) {
    const source = receipts.get(url.pathname.slice('/receipt/'.length))
    if (!source) return response.writeHead(404).end('receipt not found')
    response.writeHead(200, source.headers)
    return response.end(Buffer.from(source.body))
  }
  if (request.method === 'POST' && url.pathname === '/test/provision') {
    const { space } = JSON.parse((await readBody(request)).toString())
    const cause = await delegate({
      issuer: provisioner,
      audience: context.id,
      capabilities: [{ can: 'provider/add', with: customer, nb: { provider: context.id.did(), consumer: space } }],
    })
    const put = await context.provisionsStorage.put({ cause, consumer: space, customer, provider: context.id.did() })
    response.writeHead(put.ok ? 200 : 500, { 'content-type': 'application/json' })
    return response.end(JSON.stringify(put))
  }
  if (request.method === 'GET' && url.pathname === '/test/uploads') {
    const found = {}
    for (const item of context.uploadTable.items ?? []) {
      ;(found[item.space] ??= []).push(`${item.root}`)
    }
    response.writeHead(200, { 'content-type': 'application/json' })
    return response.end(JSON.stringify(found))
  }
  response.writeHead(404).end('not served here')
}

const server = http.createServer((request, response) =>
  handle(request, response).catch((error) => {
    console.error(error)
    if (!response.headersSent) response.writeHead(500)
    response.end(String(error?.message ?? error))
  })
)
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address()
  console.log(JSON.stringify({ url: `http://127.0.0.1:${port}`, did: context.id.did() }))
})
