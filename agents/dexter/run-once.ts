// run-once: answer ONE query with Dexter's agent and print ONE JSON result on stdout.
//
// Dexter (virattt/dexter) has no headless mode; this wrapper, uploaded by the fleet's
// `dexter` runtime into the root of the Dexter checkout (so `./src/...` imports resolve),
// drives its library API the way `src/evals/run.ts` does. Run with `bun run`.
//
// In:  the query on stdin (bytes as given; never argv or a shell string);
//      DEXTER_TIMEOUT_MS (abort after), DEXTER_MODEL, DEXTER_MAX_ITERATIONS,
//      FLEET_DEXTER_CLEAR_CACHE=1 (remove .dexter/cache first: no answers leak
//      between jobs), and the model/data keys in the environment.
// Out: one line of JSON: {ok, answer, toolCalls:[{tool,args}], toolErrors (tool_error
//      events), toolErrorDetails, iterations,
//      totalTimeMs, tokenUsage (summed over EVERY model call, the tool routers' too),
//      modelCalls, elapsedMs, error?: {kind, status?, retryAfterSecs?, message}};
//      progress events as JSON lines on stderr. Exit 0 on an answer, 1 otherwise.
import { rmSync } from 'node:fs';

const started = Date.now();
const timeoutMs = Number(process.env.DEXTER_TIMEOUT_MS || 600_000);
const model = process.env.DEXTER_MODEL || 'gpt-5.6-sol';
const maxIterations = Number(process.env.DEXTER_MAX_ITERATIONS || 10);

type Failure = { status: number; retryAfterSecs?: number; path: string };
const usage = { inputTokens: 0, outputTokens: 0, totalTokens: 0 };
let modelCalls = 0;
const failures: Failure[] = [];
const counting: Promise<void>[] = [];

// Paths of model APIs (OpenAI chat/responses, Anthropic messages, Gemini).
const MODEL_PATH = /\/(chat\/completions|responses|messages)(\?|$)|:(stream)?generateContent/;

function addUsage(text: string) {
  // A JSON body, or server-sent events: take the largest figures any `usage` object
  // reports for this call (streams repeat them cumulatively).
  let input = 0;
  let output = 0;
  const visit = (v: any) => {
    if (!v || typeof v !== 'object') return;
    if (v.usage && typeof v.usage === 'object') {
      const u = v.usage;
      input = Math.max(input, Number(u.input_tokens ?? u.prompt_tokens ?? 0) || 0);
      output = Math.max(output, Number(u.output_tokens ?? u.completion_tokens ?? 0) || 0);
    }
    for (const k of Object.keys(v)) if (k !== 'usage') visit(v[k]);
  };
  const docs = text.trimStart().startsWith('{')
    ? [text]
    : text.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim());
  for (const d of docs) {
    try {
      visit(JSON.parse(d));
    } catch {
      // not JSON ([DONE], keep-alives)
    }
  }
  usage.inputTokens += input;
  usage.outputTokens += output;
  usage.totalTokens += input + output;
}

const realFetch = globalThis.fetch;
globalThis.fetch = (async (input: any, init?: any) => {
  const url = String(input instanceof Request ? input.url : input);
  const response = await realFetch(input, init);
  let path = url;
  try {
    path = new URL(url).pathname;
  } catch {}
  if (MODEL_PATH.test(url)) {
    modelCalls += 1;
    if (!response.ok) {
      const ra = Number(response.headers.get('retry-after'));
      failures.push({ status: response.status, path, ...(Number.isFinite(ra) && ra >= 0 && response.headers.has('retry-after') ? { retryAfterSecs: ra } : {}) });
    } else {
      counting.push(response.clone().text().then(addUsage, () => {}));
    }
  }
  return response;
}) as typeof fetch;

function finish(result: Record<string, unknown>, code: number): never {
  process.stdout.write(JSON.stringify({ ...result, elapsedMs: Date.now() - started }) + '\n');
  process.exit(code);
}

const query = await Bun.stdin.text();
if (process.env.FLEET_DEXTER_CLEAR_CACHE === '1') rmSync('.dexter/cache', { recursive: true, force: true });

const controller = new AbortController();
const timer = setTimeout(() => controller.abort(), timeoutMs);
let done: any = null;
let thrown: unknown = null;
const toolErrors: Array<{ tool: string; error: string }> = [];
try {
  // Imported after fetch is wrapped, so every client the agent builds is counted.
  const { Agent } = await import('./src/agent/agent.js');
  const agent = await Agent.create({ model, channel: 'headless', memoryEnabled: false, maxIterations, signal: controller.signal });
  for await (const event of agent.run(query)) {
    if (event.type === 'done') {
      done = event;
      continue;
    }
    if (event.type === 'tool_error') toolErrors.push({ tool: event.tool, error: String(event.error).slice(0, 500) });
    // Progress for the log (Dexter's own logger is in memory only).
    if (event.type !== 'stream_progress') process.stderr.write(JSON.stringify(event) + '\n');
  }
} catch (e) {
  thrown = e;
}
clearTimeout(timer);
await Promise.allSettled(counting);

const answer = typeof done?.answer === 'string' ? done.answer : '';
const toolCalls = (done?.toolCalls ?? []).map((c: any) => ({ tool: c.tool, args: c.args }));
const report = {
  answer,
  toolCalls,
  toolErrors: toolErrors.length,
  toolErrorDetails: toolErrors.slice(0, 20),
  iterations: done?.iterations ?? 0,
  totalTimeMs: done?.totalTime ?? 0,
  tokenUsage: { ...usage, reportedByAgent: done?.tokenUsage ?? null },
  modelCalls,
};
const lastFailure = failures[failures.length - 1];
const message = thrown instanceof Error ? thrown.message : thrown ? String(thrown) : answer;
let error: Record<string, unknown> | null = null;
if (controller.signal.aborted) {
  error = { kind: 'timeout', message: `no answer within DEXTER_TIMEOUT_MS=${timeoutMs}` };
} else if (lastFailure && (thrown || !answer || answer.startsWith('Error:'))) {
  error = { kind: 'http', ...lastFailure, message };
} else if (thrown) {
  error = { kind: 'exception', message };
} else if (!done) {
  error = { kind: 'no_done', message: 'the agent ended without a done event' };
} else if (!answer.trim()) {
  error = { kind: 'empty_answer', message: 'empty answer (a tool was denied, or the model said nothing)' };
} else if (done.iterations >= maxIterations && answer.startsWith('Reached maximum iterations')) {
  // Dexter's own sentinel when it runs out of steps (src/agent/agent.ts): no answer.
  error = { kind: 'max_iterations', message: answer };
} else if (answer.startsWith('Error:')) {
  error = { kind: 'agent_error', message: answer };
}
if (error) finish({ ok: false, ...report, error }, 1);
finish({ ok: true, ...report }, 0);
