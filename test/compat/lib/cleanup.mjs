// Deletes every sandbox the suite's API key can see (run.sh calls it after the
// tests, against the stasisd it started for them). Plain fetch, not the SDK,
// so cleanup does not depend on what is being tested. Exits 1 if any sandbox
// could not be deleted.

const base = process.env.STASIS_URL
const key = process.env.STASIS_API_KEY
const headers = { "X-API-Key": key }

async function call(method, path) {
  const res = await fetch(base + path, { method, headers, signal: AbortSignal.timeout(120_000) })
  const text = await res.text()
  return { status: res.status, body: text ? JSON.parse(text) : undefined }
}

const list = await call("GET", "/sandboxes")
if (list.status !== 200) {
  console.error(`cleanup: GET /sandboxes answered ${list.status}: ${JSON.stringify(list.body)}`)
  process.exit(1)
}
let failed = 0
for (const sb of list.body) {
  const del = await call("DELETE", `/sandboxes/${sb.id}`)
  if (del.status === 204 || del.status === 200 || del.status === 404) {
    console.log(`cleanup: deleted leftover sandbox ${sb.id} (${sb.name}, ${sb.status})`)
  } else {
    failed++
    console.error(`cleanup: DELETE /sandboxes/${sb.id} answered ${del.status}: ${JSON.stringify(del.body)}`)
  }
}
process.exit(failed ? 1 : 0)
