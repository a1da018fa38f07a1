// Drives the running router explorer's SQL page in Debian's headless Chromium (playwright-core): types each
// query given on the command line into the query box, submits it, and records the error text or the row
// count the page shows. Prints one JSON line: {ok, results: [{query, error, caption, exceptions}]}.
//
//   node check_sql.mjs BASE_URL TIMEOUT_MS QUERY [QUERY ...]
//   CHROMIUM=/path/to/chromium overrides /usr/bin/chromium.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, timeoutArg, ...queries] = process.argv.slice(2);
if (!base || !queries.length) {
  console.error("usage: node check_sql.mjs BASE_URL TIMEOUT_MS QUERY [QUERY ...]");
  process.exit(2);
}
const timeout = Number(timeoutArg || 60000);
const profile = mkdtempSync(join(tmpdir(), "rx-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 1000 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const pageErrors = [];
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  await page.goto(`${base}/?page=sql`, { waitUntil: "domcontentloaded", timeout });
  await page.waitForFunction(() => document.body.innerText.includes("page script ran in"), null, { timeout });
  const results = [];
  for (const query of queries) {
    const box = page.locator("textarea").first();
    await box.fill(query);
    await page.getByRole("button", { name: "Run", exact: true }).click();
    await page.waitForTimeout(1000); // let the rerun start before waiting for its outcome
    // The rerun is done when the caption of a result or an error for this query is shown.
    await page.waitForFunction(
      () => {
        const text = document.body.innerText;
        return !document.querySelector('[data-testid="stStatusWidget"]') &&
          (document.querySelector('[data-testid="stAlert"]') !== null || /row\(s\) in \d+ ms/.test(text));
      },
      null,
      { timeout },
    );
    await page.waitForTimeout(500);
    results.push(await page.evaluate((q) => ({
      query: q,
      error: [...document.querySelectorAll('[data-testid="stAlert"]')].map((e) => e.innerText).join(" | "),
      caption: (document.body.innerText.match(/[0-9,]+ row\(s\) in \d+ ms/) || [null])[0],
      exceptions: [...document.querySelectorAll('[data-testid="stException"]')].map((e) => e.innerText),
    }), query));
  }
  console.log(JSON.stringify({ ok: true, results, pageErrors }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err), pageErrors }));
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
