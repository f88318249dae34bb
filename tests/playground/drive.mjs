// Drives GET /playground in headless Chromium as a person would: pastes the
// token, creates a session, sends one turn as a stream and then one more as
// JSON (which the test's server refuses: its limit is one turn a minute),
// and prints what the page showed as one JSON line for the Rust test
// (tests/tests/e2e/playground.rs) to judge.
//
//   node drive.mjs BASE_URL TOKEN
//   node drive.mjs BASE_URL TOKEN follow
//
// With `follow`, instead: a slow turn streamed, the page reloaded mid-way
// and the stream resumed with its button, then another turn cancelled with
// its button.
//
// Debian's Chromium (/usr/bin/chromium) and npm's playwright-core, both
// installed by scripts/browser.sh. Every wait is bounded.
import { chromium } from "playwright-core";

const [base, token, mode] = process.argv.slice(2);
if (!base || !token) {
  console.error("usage: node drive.mjs BASE_URL TOKEN");
  process.exit(2);
}
const WAIT = { timeout: 20_000 };

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  const failures = [];
  page.on("pageerror", (e) => failures.push(String(e)));
  // Chromium logs every 4xx as a console error; the 429 is expected here.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) failures.push(m.text());
  });
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(base)) external.push(r.url()); });

  await page.goto(base + "/playground", { waitUntil: "load", ...WAIT });
  const title = await page.title();
  await page.fill("#token", token);
  await page.fill("#title", "from the playground");
  await page.click("#create-session");
  await page.waitForFunction(() => document.getElementById("sessions").value !== "", null, WAIT);
  const createdStatus = await page.textContent("#status");
  if (mode === "follow") {
    console.log(JSON.stringify({ title, createdStatus, ...(await follow(page)), failures, external }));
    process.exit(0);
  }

  // Every text the reply shows while it streams, as the page renders it.
  await page.evaluate(() => {
    window.__seen = [];
    const output = document.getElementById("output");
    new MutationObserver(() => window.__seen.push(output.textContent))
      .observe(output, { childList: true, characterData: true, subtree: true });
  });
  await page.fill("#input", "one two three four five six");
  await page.click("#send-stream");
  await page.waitForFunction(
    () => document.getElementById("turn-status").textContent === "completed", null, WAIT);
  const streamed = {
    seen: await page.evaluate(() => window.__seen),
    output: await page.textContent("#output"),
    status: await page.textContent("#status"),
    rateLimit: await page.textContent("#ratelimit"),
  };

  await page.fill("#input", "one more");
  await page.click("#send-json");
  await page.waitForFunction(
    () => document.getElementById("status").textContent.startsWith("429"), null, WAIT);
  const refused = {
    status: await page.textContent("#status"),
    rateLimit: await page.textContent("#ratelimit"),
    problem: JSON.parse(await page.textContent("#problem")),
    turnStatus: await page.textContent("#turn-status"),
  };
  console.log(JSON.stringify({ title, createdStatus, streamed, refused, failures, external }));
} finally {
  await browser.close();
}

/** The follow run: resume after a reload, then cancel. */
async function follow(page) {
  const deltas = () => page.evaluate(() =>
    document.getElementById("body").textContent.split("\n").filter((l) => l.startsWith("turn.delta")).length);
  await page.fill("#input", "one two three four five six seven eight nine ten");
  await page.click("#send-stream");
  await page.waitForFunction(() =>
    document.getElementById("body").textContent.split("turn.delta").length > 3, null, WAIT);
  const beforeReload = await page.textContent("#output");
  await page.reload({ waitUntil: "load", ...WAIT });
  const resumeEnabled = !(await page.isDisabled("#resume"));
  await page.fill("#token", token);
  await page.click("#resume");
  await page.waitForFunction(
    () => document.getElementById("turn-status").textContent === "completed", null, WAIT);
  const resumed = { beforeReload, resumeEnabled, output: await page.textContent("#output"),
    resumedDeltas: await deltas() };

  await page.click("#load-sessions");
  await page.waitForFunction(() => document.getElementById("sessions").value !== "", null, WAIT);
  await page.fill("#input", "one two three four five six seven eight nine ten");
  await page.click("#send-stream");
  await page.waitForFunction(() =>
    document.getElementById("body").textContent.includes("turn.delta"), null, WAIT);
  await page.click("#cancel");
  await page.waitForFunction(
    () => document.getElementById("turn-status").textContent === "cancelled", null, WAIT);
  const cancelled = { output: await page.textContent("#output"),
    status: await page.textContent("#turn-status"),
    cancelDisabledAfter: await page.isDisabled("#cancel") };
  return { resumed, cancelled };
}
