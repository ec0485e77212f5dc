// A node:test reporter that records what every test did, one JSON object a
// line: {file, name, status, reason?}. `file` is the test file's base name,
// `name` the test's name under its describe blocks joined with " › ", and
// `status` pass, fail, skip or todo. run.sh writes it next to the spec
// output and check/compatibility-doc.test.mjs compares it with the tables
// of docs/COMPATIBILITY.md.

import { basename } from "node:path"

export default async function* resultsReporter(source) {
  const stacks = new Map() // file -> names of the tests and suites started, by nesting
  for await (const { type, data } of source) {
    if (type === "test:start") {
      const stack = stacks.get(data.file) ?? []
      stack.length = data.nesting
      stack.push(data.name)
      stacks.set(data.file, stack)
      continue
    }
    if (type !== "test:pass" && type !== "test:fail") continue
    if (data.details?.type === "suite") continue
    const path = [...(stacks.get(data.file) ?? []).slice(0, data.nesting), data.name]
    let status = type === "test:pass" ? "pass" : "fail"
    let reason
    if (data.skip !== undefined && data.skip !== false) {
      status = "skip"
      reason = typeof data.skip === "string" ? data.skip : undefined
    } else if (data.todo !== undefined && data.todo !== false) {
      status = "todo"
      reason = typeof data.todo === "string" ? data.todo : undefined
    }
    yield JSON.stringify({ file: data.file ? basename(data.file) : "", name: path.join(" › "), status, reason }) + "\n"
  }
}
