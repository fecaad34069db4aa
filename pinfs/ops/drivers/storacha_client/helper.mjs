// pinfs's bridge to Storacha: @storacha/client (Storacha's own client; no maintained Python one
// exists) driven by JSON requests on stdin, one a line, each answered by one JSON line on stdout, in
// order, until stdin closes (one process serves a whole sync run: starting Node costs a second).
//
// Request: {"command": "check"|"put"|"get"|"ls", "space", "service_url", "service_did",
//           "receipts_url", "car_path" (put), "root" (get)}
// Secrets come only from the environment: PINFS_STORACHA_PRINCIPAL (the agent's private key, as
// `storacha key create` prints it) and PINFS_STORACHA_PROOF (the space's delegation to that agent,
// as `storacha delegation create --base64` prints it).
// Answer: {"ok": ...} or {"error": "one line"}; exit status 0 either way (1: the helper broke).
import fs from 'node:fs'
import readline from 'node:readline'
import dns from 'node:dns'
import * as Client from '@storacha/client'
import { StoreMemory } from '@storacha/client/stores/memory'
import * as Proof from '@storacha/client/proof'
import { Signer } from '@storacha/client/principal/ed25519'
import * as DID from '@ipld/dag-ucan/did'
import { CAR, HTTP } from '@ucanto/transport'
import { connect } from '@ucanto/client'
import { base58btc } from 'multiformats/bases/base58'

dns.setDefaultResultOrder('ipv4first')

const answer = (value) => {
  process.stdout.write(JSON.stringify(value) + '\n')
}

function connection(request) {
  return connect({
    id: DID.parse(request.service_did),
    codec: CAR.outbound,
    channel: HTTP.open({ url: new URL(request.service_url), method: 'POST' }),
  })
}

async function client(request) {
  const principal = process.env.PINFS_STORACHA_PRINCIPAL
  const proofText = process.env.PINFS_STORACHA_PROOF
  if (!principal) throw new Error('no agent key (principal_env) given')
  if (!proofText) throw new Error('no space delegation (proof_env) given')
  const service = connection(request)
  const created = await Client.create({
    principal: Signer.parse(principal),
    store: new StoreMemory(),
    serviceConf: { access: service, upload: service, filecoin: service },
    receiptsEndpoint: new URL(request.receipts_url),
  })
  const space = await created.addSpace(await Proof.parse(proofText))
  if (space.did() !== request.space) {
    throw new Error(`the proof is for space ${space.did()}, not ${request.space}`)
  }
  await created.setCurrentSpace(space.did())
  return created
}

async function pages(list) {
  const found = []
  let cursor
  do {
    const page = await list({ cursor, size: 1000 })
    found.push(...page.results)
    cursor = page.cursor && page.results.length ? page.cursor : undefined
  } while (cursor)
  return found
}

// Every upload of the space: its root, and its shards (the CARs stored) with their sizes.
async function uploads(storacha) {
  const sizes = new Map()
  for (const item of await pages((options) => storacha.capability.blob.list(options))) {
    sizes.set(base58btc.encode(item.blob.digest), item.blob.size)
  }
  return (await pages((options) => storacha.capability.upload.list(options))).map((item) => ({
    root: `${item.root}`,
    shards: (item.shards ?? []).map((shard) => ({
      cid: `${shard}`,
      size: sizes.get(base58btc.encode(shard.multihash.bytes)) ?? null,
    })),
  }))
}

async function run(storacha, request) {
  switch (request.command) {
    case 'check':
      await storacha.capability.upload.list({ size: 1 })
      return { space: request.space }
    case 'put': {
      const bytes = fs.readFileSync(request.car_path)
      const root = await storacha.uploadCAR(new Blob([bytes]), { retries: 2 })
      return { root: `${root}` }
    }
    case 'ls':
      return { uploads: await uploads(storacha) }
    default:
      throw new Error(`unknown command ${request.command}`)
  }
}

const clients = new Map() // one client per service and space, made on first use

for await (const line of readline.createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  if (!line.trim()) continue
  try {
    const request = JSON.parse(line)
    const key = JSON.stringify([request.space, request.service_url, request.service_did, request.receipts_url])
    if (!clients.has(key)) clients.set(key, client(request))
    answer({ ok: await run(await clients.get(key), request) })
  } catch (error) {
    const cause = error?.cause?.message ? ` (${error.cause.message})` : ''
    answer({ error: `${error?.message ?? error}${cause}`.split('\n')[0].slice(0, 500) })
  }
}
