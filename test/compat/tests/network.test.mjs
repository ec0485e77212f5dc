// Network rules, the network log and preview URLs through the official SDK.
// stasisd runs with --egress deny and no upstream resolver (run.sh): the
// connections made here are refused by stasisd itself and nothing leaves
// the machine. Preview URLs reach stasisd through preload.mjs, which maps
// https://{port}-{id}.sandbox.superserve.ai onto it.

import { describe, test } from "node:test"
import assert from "node:assert/strict"
import { ConflictError, Sandbox, ValidationError, previewUrl, MIN_PREVIEW_PORT, MAX_PREVIEW_PORT } from "@superserve/sdk"
import { SLOW, createMinimal, eventually, rejectsWith } from "../lib/helpers.mjs"

describe("Network rules", () => {
  test("Sandbox.create({ network }) and update({ network }) set the rules every response shows", SLOW, async (t) => {
    const sandbox = await createMinimal(t, {
      network: { allowOut: ["api.example.test", "*.github.test", "198.51.100.0/24"], denyOut: ["0.0.0.0/0"] },
    })
    let info = await sandbox.getInfo()
    assert.deepEqual(info.network, { allowOut: ["api.example.test", "*.github.test", "198.51.100.0/24"], denyOut: ["0.0.0.0/0"] })
    const listed = (await Sandbox.list()).find((s) => s.id === sandbox.id)
    assert.deepEqual(listed.network, info.network)

    // The network object replaces both lists.
    await sandbox.update({ network: { denyOut: ["203.0.113.0/24"] } })
    info = await sandbox.getInfo()
    assert.deepEqual(info.network, { allowOut: [], denyOut: ["203.0.113.0/24"] })
    await Sandbox.updateById(sandbox.id, { network: { allowOut: ["x.test"] } })
    assert.deepEqual((await sandbox.getInfo()).network, { allowOut: ["x.test"], denyOut: [] })

    // Bad rules: a ValidationError naming the entry, nothing changed.
    const err = await rejectsWith(() => sandbox.update({ network: { denyOut: ["evil.test"] } }), ValidationError, "a domain in denyOut")
    assert.match(err.message, /evil\.test/)
    await rejectsWith(() => sandbox.update({ network: { allowOut: ["10.0.0.0/33"] } }), ValidationError, "a malformed CIDR")
    assert.deepEqual((await sandbox.getInfo()).network, { allowOut: ["x.test"], denyOut: [] })

    // Not while paused.
    await sandbox.pause()
    await rejectsWith(() => sandbox.update({ network: { allowOut: [] } }), ConflictError, "network of a paused sandbox")
  })
})

describe("Network log", () => {
  test("sandbox.getNetworkLog() lists blocked connections, newest first, page by page", SLOW, async (t) => {
    const sandbox = await createMinimal(t, { network: { denyOut: ["0.0.0.0/0"] } })
    for (const ip of ["203.0.113.21", "203.0.113.22", "203.0.113.23"]) {
      await sandbox.commands.run(`echo | timeout 10 nc ${ip} 443`)
    }
    const all = await eventually(async () => {
      const page = await sandbox.getNetworkLog({ verdict: "blocked" })
      return page.events.length === 3 ? page : undefined
    }, { what: "three blocked rows" })
    assert.equal(all.hasMore, false)
    assert.deepEqual(all.events.map((e) => e.dstIp), ["203.0.113.23", "203.0.113.22", "203.0.113.21"])
    for (const e of all.events) {
      assert.equal(e.kind, "connection")
      assert.equal(e.verdict, "blocked")
      assert.equal(e.dstPort, 443)
      assert.equal(e.matchRule, "deny_out:0.0.0.0/0")
      assert.ok(e.ts instanceof Date && !Number.isNaN(e.ts.getTime()))
    }
    // Paging: limit 2, then the cursor.
    const first = await sandbox.getNetworkLog({ limit: 2 })
    assert.equal(first.events.length, 2)
    assert.equal(first.hasMore, true)
    const second = await sandbox.getNetworkLog({ limit: 2, before: first.nextCursor })
    assert.deepEqual(second.events.map((e) => e.dstIp), ["203.0.113.21"])
    assert.equal(second.hasMore, false)
    // Time filters take RFC3339.
    const none = await sandbox.getNetworkLog({ before: all.events[2].ts.toISOString() })
    assert.equal(none.events.length, 0)
    assert.equal((await sandbox.getNetworkLog({ since: all.events[2].ts.toISOString() })).events.length, 3)
    assert.equal((await sandbox.getNetworkLog({ verdict: "allowed" })).events.length, 0)
  })
})

describe("Preview URLs", () => {
  test("sandbox.getPreviewUrl builds the URL string (pure string construction, no request)", SLOW, async (t) => {
    const sandbox = await createMinimal(t)
    assert.equal(sandbox.getPreviewUrl(8000), `https://8000-${sandbox.id}.sandbox.superserve.ai`)
    assert.equal(previewUrl(sandbox.id, "sandbox.superserve.ai", MAX_PREVIEW_PORT), `https://${MAX_PREVIEW_PORT}-${sandbox.id}.sandbox.superserve.ai`)
    await rejectsWith(async () => sandbox.getPreviewUrl(MIN_PREVIEW_PORT - 1), ValidationError, "a privileged port")
    await rejectsWith(async () => sandbox.getPreviewUrl(80.5), ValidationError, "a fractional port")
  })

  test("the preview URL reaches a server in the sandbox, and wakes it when paused", SLOW, async (t) => {
    const sandbox = await createMinimal(t)
    const url = sandbox.getPreviewUrl(8000)
    let res = await fetch(url)
    assert.equal(res.status, 502)
    assert.match(await res.text(), /listening on port 8000/)

    await sandbox.commands.run("mkdir -p /tmp/www && echo hello-preview > /tmp/www/index.html && httpd -p 8000 -h /tmp/www")
    res = await fetch(url)
    assert.equal(res.status, 200)
    assert.equal(await res.text(), "hello-preview\n")

    await sandbox.pause()
    assert.equal((await sandbox.getInfo()).status, "paused")
    res = await fetch(url + "/index.html")
    assert.equal(res.status, 200)
    assert.equal(await res.text(), "hello-preview\n")
    assert.equal((await sandbox.getInfo()).status, "active")

    await sandbox.kill()
    res = await fetch(url)
    assert.equal(res.status, 404)
  })
})
