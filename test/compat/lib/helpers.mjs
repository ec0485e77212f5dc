// Shared helpers for the compatibility suite. Nothing here talks to stasisd
// except through the SDK (or, where a test checks the wire itself, through
// fetch to $STASIS_URL).

import { inflateRawSync } from "node:zlib"
import * as zlib from "node:zlib"
import { randomBytes } from "node:crypto"
import { Sandbox } from "@superserve/sdk"

/** The busybox template: starts in well under a second. */
export const MINIMAL = "stasis/minimal"

/** Per test file: names and metadata carry it so runs never collide. */
export const RUN_ID = `compat-${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`

export const STASIS_URL = process.env.STASIS_URL
export const API_KEY = process.env.STASIS_API_KEY

/** Per-test timeout: sandboxes are real gVisor machines. */
export const SLOW = { timeout: 180_000 }

let seq = 0
export function uniqueName(prefix) {
  seq++
  return `${prefix}-${RUN_ID}-${seq}`
}

/**
 * Creates a stasis/minimal sandbox for the test and kills it when the test
 * ends (pass or fail).
 */
export async function createMinimal(t, options = {}) {
  const sandbox = await Sandbox.create({
    name: uniqueName(options.namePrefix ?? "compat"),
    fromTemplate: MINIMAL,
    ...options,
  })
  t.after(() => sandbox.kill())
  return sandbox
}

/** Rejects unless fn's promise rejects with an instance of cls; returns the error. */
export async function rejectsWith(fn, cls, what) {
  let err
  try {
    await fn()
  } catch (e) {
    err = e
  }
  if (err === undefined) {
    throw new Error(`${what}: expected ${cls.name}, but the call succeeded`)
  }
  if (!(err instanceof cls)) {
    throw new Error(
      `${what}: expected ${cls.name}, got ${err?.name ?? typeof err} (status ${err?.statusCode}, code ${err?.code}): ${err?.message}`,
      { cause: err },
    )
  }
  return err
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Polls fn until it returns a truthy value or the deadline passes. */
export async function eventually(fn, { timeoutMs = 10_000, intervalMs = 100, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    last = await fn()
    if (last) return last
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`)
    await sleep(intervalMs)
  }
}

/**
 * Reads a number a background loop keeps rewriting. The loop truncates the
 * file before writing: a read can land in between and find it empty, which
 * is retried rather than taken for 0.
 */
export async function readCounter(sandbox, path) {
  for (let i = 0; i < 50; i++) {
    const text = (await sandbox.files.readText(path)).trim()
    if (text !== "") return Number(text)
    await sleep(10)
  }
  throw new Error(`${path} stays empty`)
}

/**
 * A control-plane call the SDK has no method for (stasis extensions such as
 * POST /sandboxes/{id}/snapshots), with the suite's API key. Returns the
 * decoded JSON answer; throws on a non-2xx status.
 */
export async function controlPlane(method, path, body) {
  const res = await fetch(STASIS_URL + path, {
    method,
    headers: { "X-API-Key": API_KEY, ...(body !== undefined ? { "Content-Type": "application/json" } : {}) },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method} ${path} answered ${res.status}: ${text}`)
  return text ? JSON.parse(text) : undefined
}

// --- zip ----------------------------------------------------------------------

/**
 * Parses a zip archive through its central directory (so streamed archives
 * with data descriptors work) and returns its entries by name, in order:
 * Map<name, { dir: boolean, data: Buffer }>. Stored and deflated entries
 * only; CRCs are checked when node:zlib can compute them.
 */
export function unzip(bytes) {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const EOCD = 0x06054b50
  let eocd = -1
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 0xffff); i--) {
    if (buf.readUInt32LE(i) === EOCD) {
      eocd = i
      break
    }
  }
  if (eocd < 0) throw new Error(`not a zip archive (${buf.length} bytes, no end-of-central-directory record)`)
  const count = buf.readUInt16LE(eocd + 10)
  const cdOffset = buf.readUInt32LE(eocd + 16)
  if (count === 0xffff || cdOffset === 0xffffffff) throw new Error("zip64 archives are not supported by this reader")
  const entries = new Map()
  let p = cdOffset
  for (let n = 0; n < count; n++) {
    if (buf.readUInt32LE(p) !== 0x02014b50) throw new Error(`bad central directory header at ${p}`)
    const method = buf.readUInt16LE(p + 10)
    const crc = buf.readUInt32LE(p + 16)
    const compSize = buf.readUInt32LE(p + 20)
    const size = buf.readUInt32LE(p + 24)
    const nameLen = buf.readUInt16LE(p + 28)
    const extraLen = buf.readUInt16LE(p + 30)
    const commentLen = buf.readUInt16LE(p + 32)
    const local = buf.readUInt32LE(p + 42)
    const name = buf.toString("utf8", p + 46, p + 46 + nameLen)
    p += 46 + nameLen + extraLen + commentLen

    if (buf.readUInt32LE(local) !== 0x04034b50) throw new Error(`bad local header for ${name}`)
    const start = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28)
    const raw = buf.subarray(start, start + compSize)
    let data
    if (method === 0) data = Buffer.from(raw)
    else if (method === 8) data = inflateRawSync(raw)
    else throw new Error(`${name}: unsupported compression method ${method}`)
    if (data.length !== size) throw new Error(`${name}: size ${data.length}, central directory says ${size}`)
    if (typeof zlib.crc32 === "function" && (zlib.crc32(data) >>> 0) !== crc) throw new Error(`${name}: CRC mismatch`)
    entries.set(name, { dir: name.endsWith("/"), data })
  }
  return entries
}
