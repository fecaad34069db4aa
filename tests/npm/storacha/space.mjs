// Make what a Storacha user has after `storacha key create`, `storacha space create` and
// `storacha delegation create <agent> --base64`: an agent key, a space, and the space's delegation
// of every capability to the agent. Prints {"principal","proof","space"} as one JSON line.
import * as Signer from '@ucanto/principal/ed25519'
import { delegate } from '@ucanto/core'
import * as Link from 'multiformats/link'
import { identity } from 'multiformats/hashes/identity'
import { base64 } from 'multiformats/bases/base64'

const agent = await Signer.generate()
const space = await Signer.generate()
const delegation = await delegate({
  issuer: space,
  audience: agent,
  capabilities: [{ can: '*', with: space.did() }],
  expiration: Infinity,
})
const archive = await delegation.archive()
if (archive.error) throw archive.error
const proof = Link.create(0x0202, identity.digest(archive.ok)).toString(base64)
console.log(JSON.stringify({ principal: Signer.format(agent), proof, space: space.did() }))
