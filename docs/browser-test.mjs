// Opens the served documentation in headless Chromium and checks what an
// integrator sees, clicking through it as one would: the guide, the error table,
// the operation with a tab per status and its examples. Fails on any request that
// leaves the service (the page must work offline) and on any script error.
// Usage: node browser-test.mjs URL SCREENSHOT
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
const problems = [];
const expect = (text, wanted, where) => {
  for (const item of wanted) {
    if (!text.includes(item)) problems.push(`${where}: "${item}" is not shown`);
  }
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const origin = new URL(url).origin;
  page.on('request', (request) => {
    const target = new URL(request.url());
    if (target.origin !== origin && !['data:', 'blob:'].includes(target.protocol)) {
      problems.push(`the page fetched ${request.url()}`);
    }
  });
  page.on('pageerror', (error) => problems.push(`script error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });

  await page.goto(url, { waitUntil: 'networkidle' });
  expect(await page.innerText('body'), [
    'getAsyncJobStatus', 'PENDING', 'DONE', 'FAILED', 'composition:read', 'Polling efficiently',
  ], 'the guide');

  // The sidebar works (client-side navigation) and leads to the error table.
  await page.getByText('Errors', { exact: true }).first().click();
  await page.waitForURL(/#\/section\/errors$/, { timeout: 5000 }).catch(() => problems.push('the sidebar did not navigate'));
  const errors = page.locator('table').filter({ hasText: 'too_many_requests' });
  expect(await errors.innerText().catch(() => ''), [
    '400', '401', '403', '404', '405', '429', '500', 'request_malformed', 'access_denied', 'jwt_expired',
    'forbidden', 'not_found', 'method_not_allowed', 'too_many_requests', 'internal_error',
  ], 'the error table');

  // The operation, with a tab for every status and the named examples.
  await page.getByText('async', { exact: true }).first().click();
  await page.getByText("Get the status of a composition's async job").first().click();
  await page.waitForURL(/getasyncjobstatus$/, { timeout: 5000 }).catch(() => problems.push('the operation did not open'));
  // Redoc renders a section when it comes into view.
  await page.getByText('PENDING, ask again later').first().waitFor({ timeout: 5000 }).catch(() => {});
  expect(await page.innerText('body'), [
    ...['200', '304', '400', '401', '403', '404', '405', '429', '500'].map((code) => `\n${code}\n`),
    'PENDING, ask again later', 'If-None-Match', 'Prefer',
  ], 'the operation');
  await page.screenshot({ path: screenshot });
} finally {
  await browser.close();
}

if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log(`the documentation renders in Chromium; screenshot: ${screenshot}`);
