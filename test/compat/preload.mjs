// Preload (`node --import ./preload.mjs`) that points Superserve's official
// SDK at a local stasisd without touching the SDK's files.
//
// With a base URL the SDK sends control-plane calls to that URL, but its
// data plane still goes to Superserve's shared host:
//
//   https://sandbox.superserve.ai/exec         + X-Superserve-Sandbox-Id: {id}
//   https://boxd-{id}.sandbox.superserve.ai/…  (browsers, other hosts)
//   wss://boxd-{id}.sandbox.superserve.ai/exec/connect   (commands.spawn)
//
// This module rewrites those to $STASIS_URL (fetch and WebSocket), adding the
// X-Superserve-Sandbox-Id header where the id was only in the host name.
// Preview URLs, https://{port}-{id}.sandbox.superserve.ai, keep their host
// name (stasisd routes them by it: run.sh starts it with that preview
// domain) and go over plain HTTP to stasisd's port; the name resolves to
// loopback here. It
// also installs a global WebSocket (Node 20 has none) built on the pinned
// `ws` package. Any request that would still leave the machine is refused:
// the suite only ever talks to loopback.
//
// STASIS_COMPAT_TRACE=1 prints every rewritten request and its status to
// stderr, which is what to attach when reporting a wire discrepancy.

import { WebSocket as WsWebSocket } from "ws"

import dns from "node:dns"

const SANDBOX_ID_HEADER = "X-Superserve-Sandbox-Id"
const PREVIEW_HOST = /^\d+-[^.]+\.(.+)$/i
const SUPERSERVE_DOMAIN = /(^|\.)superserve\.ai$/i
const BOXD_HOST = /^boxd-([^.]+)\.(.+)$/i
const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]", "::1"])

const base = process.env.STASIS_URL
if (!base) {
  throw new Error("preload.mjs: STASIS_URL is not set (run the suite with `npm test`, which starts stasisd)")
}
const stasis = new URL(base)
if (!LOOPBACK.has(stasis.hostname)) {
  throw new Error(`preload.mjs: STASIS_URL must point at loopback, got ${base}`)
}
const trace = process.env.STASIS_COMPAT_TRACE === "1"

/**
 * Maps a URL the SDK built onto stasisd. Returns the new URL and the sandbox
 * id taken from a boxd-{id} host (undefined otherwise).
 */
export function rewrite(input, { websocket = false } = {}) {
  const u = new URL(String(input))
  let sandboxId
  if (SUPERSERVE_DOMAIN.test(u.hostname) && PREVIEW_HOST.test(u.hostname)) {
    u.protocol = websocket ? "ws:" : "http:"
    u.port = stasis.port
    return { url: u.toString(), sandboxId }
  }
  if (SUPERSERVE_DOMAIN.test(u.hostname)) {
    const m = BOXD_HOST.exec(u.hostname)
    if (m) sandboxId = m[1]
    u.protocol = websocket ? (stasis.protocol === "https:" ? "wss:" : "ws:") : stasis.protocol
    u.host = stasis.host
  }
  if (!LOOPBACK.has(u.hostname)) {
    throw new Error(`preload.mjs: refusing to contact ${u.origin}: the compat suite only talks to loopback`)
  }
  return { url: u.toString(), sandboxId }
}

// Preview hosts resolve to stasisd's loopback address; every other name
// resolves as usual.
const realLookup = dns.lookup
dns.lookup = function stasisLookup(hostname, options, callback) {
  if (SUPERSERVE_DOMAIN.test(hostname) && PREVIEW_HOST.test(hostname)) {
    if (typeof options === "function") [callback, options] = [options, {}]
    const addr = stasis.hostname === "localhost" ? "127.0.0.1" : stasis.hostname.replace(/^\[|\]$/g, "")
    const family = addr.includes(":") ? 6 : 4
    if (options?.all) return process.nextTick(callback, null, [{ address: addr, family }])
    return process.nextTick(callback, null, addr, family)
  }
  return realLookup.call(this, hostname, options, callback)
}

// --- fetch --------------------------------------------------------------------

const realFetch = globalThis.fetch

globalThis.fetch = async function stasisFetch(input, init) {
  const original = input instanceof Request ? input.url : String(input)
  const { url, sandboxId } = rewrite(original)
  let req
  if (input instanceof Request) {
    req = new Request(url, new Request(input, init))
  } else {
    req = new Request(url, { ...init, ...(init?.body !== undefined ? { duplex: "half" } : {}) })
  }
  if (sandboxId !== undefined && !req.headers.has(SANDBOX_ID_HEADER)) {
    req.headers.set(SANDBOX_ID_HEADER, sandboxId)
  }
  const res = await realFetch(req)
  if (trace) {
    const id = req.headers.get(SANDBOX_ID_HEADER)
    process.stderr.write(`[compat] ${req.method} ${original} -> ${url}${id ? ` (sandbox ${id})` : ""}: ${res.status}\n`)
  }
  return res
}

// --- WebSocket ----------------------------------------------------------------

/** A ws WebSocket that dials stasisd instead of Superserve's boxd hosts. */
class StasisWebSocket extends WsWebSocket {
  constructor(address, protocols, options = {}) {
    const { url, sandboxId } = rewrite(address, { websocket: true })
    const headers = { ...(options.headers ?? {}) }
    if (sandboxId !== undefined) headers[SANDBOX_ID_HEADER] = sandboxId
    if (trace) {
      process.stderr.write(`[compat] WebSocket ${address} -> ${url}${sandboxId ? ` (sandbox ${sandboxId})` : ""}\n`)
    }
    super(url, protocols, { ...options, headers })
  }
}

globalThis.WebSocket = StasisWebSocket
