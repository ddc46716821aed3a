// The reference PDS (@atproto/pds) on loopback, configured from PDS_* variables as its
// official image is. Prints "ready" once it serves.
import events from 'node:events'
import { PDS, envToCfg, envToSecrets, readEnv } from '@atproto/pds'

const env = readEnv()
const pds = await PDS.create(envToCfg(env), envToSecrets(env))
// PDS.start() binds every interface; the same steps, on loopback only.
await pds.ctx.sequencer.start()
const http = pds.app.listen(env.port, '127.0.0.1')
await events.once(http, 'listening')
console.log('ready')
process.on('SIGTERM', () => process.exit(0))
