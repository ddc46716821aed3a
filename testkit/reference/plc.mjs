// The reference PLC directory (@did-plc/server) on loopback, with the in-memory database the
// reference dev-env uses. PLC_PORT: where to listen. Prints "ready" once it serves.
import events from 'node:events'
import plc from '@did-plc/server'

const { Database, PlcServer } = plc
const server = PlcServer.create({ db: Database.mock() })
// PlcServer.start() binds every interface; tests stay on loopback.
const http = server.app.listen(Number(process.env.PLC_PORT), '127.0.0.1')
await events.once(http, 'listening')
console.log('ready')
process.on('SIGTERM', () => process.exit(0))
