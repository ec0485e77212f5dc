// URLs the SDK hands out for other clients (browsers, curl): signed /files
// URLs and sandbox hosts. They name the sandbox by host, {port}-{id}.{domain},
// as E2B's cloud does; with E2B_SANDBOX_URL set their origin is stasisd's
// E2B listener, so the tests send them there with that host, as a client
// whose DNS points the sandbox domain at stasisd would.
import { test } from "node:test"
import assert from "node:assert/strict"
import http from "node:http"
import { newSandbox, eventually } from "../lib/helpers.mjs"

const sbx = await newSandbox()

/** Sends a request for url to its origin with Host: host; resolves {status, body}. */
function request(url, { method = "GET", host, headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(url)
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname + u.search, method, headers: { ...headers, Host: host } }, (res) => {
      const chunks = []
      res.on("data", (c) => chunks.push(c))
      res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }))
    })
    req.on("error", reject)
    req.end(body)
  })
}

const envdHost = () => `49983-${sbx.sandboxId}.e2b.app`

test("sandbox.uploadUrl, sandbox.downloadUrl: signed /files URLs work without the access token; altered or expired ones do not", async () => {
  const up = await sbx.uploadUrl("/home/user/signed.txt")
  assert.match(up, /signature=v1_/)
  const put = await request(up, { method: "POST", host: envdHost(), headers: { "Content-Type": "application/octet-stream" }, body: "signed upload" })
  assert.equal(put.status, 200, put.body)
  assert.equal(await sbx.files.read("/home/user/signed.txt"), "signed upload")

  const down = await sbx.downloadUrl("/home/user/signed.txt", { useSignatureExpiration: 60 })
  assert.match(down, /signature_expiration=\d+/)
  const got = await request(down, { host: envdHost() })
  assert.equal(got.status, 200)
  assert.equal(got.body, "signed upload")

  // A read signature does not write, another path is not covered, an
  // expired signature is refused.
  assert.equal((await request(down, { method: "POST", host: envdHost(), body: "x" })).status, 401)
  const other = new URL(down)
  other.searchParams.set("path", "/etc/passwd")
  assert.equal((await request(other.toString(), { host: envdHost() })).status, 401)
  const expired = await sbx.downloadUrl("/home/user/signed.txt", { useSignatureExpiration: -10 })
  assert.equal((await request(expired, { host: envdHost() })).status, 401)
  assert.equal(await sbx.files.read("/home/user/signed.txt"), "signed upload")
})

test("sandbox.fileUrl: the unsigned URL needs the access token", async () => {
  await sbx.files.write("/home/user/plain.txt", "plain")
  const url = sbx.fileUrl("/home/user/plain.txt")
  assert.equal((await request(url, { host: envdHost() })).status, 401)
  const ok = await request(url, { host: envdHost(), headers: { "X-Access-Token": sbx.envdAccessToken } })
  assert.equal(ok.status, 200)
  assert.equal(ok.body, "plain")
})

test("sandbox.getHost: the host of a sandbox port reaches a server in the sandbox, with the traffic token", async () => {
  await sbx.files.write("/home/user/site/index.html", "hello from the sandbox")
  await sbx.commands.run("cd /home/user/site && python3 -m http.server 8080", { background: true })
  const host = sbx.getHost(8080)
  assert.equal(host, `8080-${sbx.sandboxId}.e2b.app`)
  const res = await eventually(async () => {
    const r = await request(process.env.E2B_SANDBOX_URL + "/index.html", { host, headers: { "E2B-Traffic-Access-Token": sbx.trafficAccessToken } })
    return r.status === 200 && r
  })
  assert.equal(res.body, "hello from the sandbox")
  assert.equal((await request(process.env.E2B_SANDBOX_URL + "/index.html", { host })).status, 401)
})
