import { defineConfig } from '@playwright/test';

// One worker: the machine is small and every test starts its own real server. Chromium is
// Debian's (/usr/bin/chromium), launched by the tests' fixtures; Playwright never downloads one.
export default defineConfig({
  testDir: 'tests/e2e',
  workers: 1,
  fullyParallel: false,
  timeout: 120_000,
  expect: { timeout: 20_000 },
  retries: 0,
  reporter: [['list']],
  globalTimeout: 40 * 60_000,
});
