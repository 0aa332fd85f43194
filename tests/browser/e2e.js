/* The browser end-to-end test page: does what the Wattcloud app's SFTP
 * provider does, against the relay that serves this page (PROTOCOL.md).
 *
 * Parameters come in the URL hash (never sent to the server), read once
 * and then removed from the address bar:
 *   scenario  e2e (default) | reuse | origin | origin_control | hostkey |
 *             sign_key | sign (the `sign` extension, sshsign.js)
 *   host      SFTP target host (default 127.0.0.1)
 *   port      SFTP target port
 *   fp        the host key fingerprint the "vault" has pinned (SHA256:...)
 *   user      SSH user name
 *   key       the user's private key (PEM / OpenSSH text; a throwaway test key)
 *   passphrase  its passphrase, when it has one
 *   dir       a directory on the server the test may write to
 *   relay     host:port of the relay to open the WebSocket on (default:
 *             this page's own; the "origin" scenario points it elsewhere)
 *   size_mib, chunk_mib   upload size and write_chunk size (50 and 8)
 *   keyname   sign_key / sign: the IndexedDB name of the browser's SSH key
 *   answer    sign: how to answer the sign_request: sign (default), never,
 *             garbage (random bytes of the right length)
 *
 * The result: document.title "PASS <scenario> ..." or "FAIL <scenario>: why",
 * the #result element, a step log in #log, and window.__result (an object
 * the test driver reads over the DevTools protocol).
 */
"use strict";

const KiB = 1024, MiB = 1024 * KiB;
const READ_CHUNK_MAX = 256 * KiB;

const params = new URLSearchParams(location.hash.slice(1));
if (location.hash) history.replaceState(null, "", location.pathname + location.search);
const scenario = params.get("scenario") || "e2e";
const t0 = performance.now();

window.__result = { scenario, done: false, ok: null, steps: [] };

function log(msg) {
  const t = ((performance.now() - t0) / 1000).toFixed(2);
  const line = `[${t}s] ${msg}`;
  window.__result.steps.push(line);
  document.getElementById("log").textContent += line + "\n";
  console.log(line);
}

function finish(ok, summary, extra) {
  if (window.__result.done) return;
  Object.assign(window.__result, extra || {}, { done: true, ok, summary,
                                                secs: (performance.now() - t0) / 1000 });
  const el = document.getElementById("result");
  el.textContent = (ok ? "PASS " : "FAIL ") + scenario + ": " + summary;
  el.className = ok ? "pass" : "fail";
  log(el.textContent);
  document.title = ok ? `PASS ${scenario} ${summary}` : `FAIL ${scenario}: ${summary}`;
}

window.addEventListener("error", (e) => finish(false, "uncaught: " + e.message));
window.addEventListener("unhandledrejection", (e) =>
  finish(false, "unhandled rejection: " + (e.reason && e.reason.message || e.reason)));

function fail(msg) { throw new Error(msg); }
function need(cond, msg) { if (!cond) fail(msg); }

function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(s) {
  need(/^([0-9a-f]{2})*$/.test(s), "not lowercase hex: " + s);
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}

const enc = new TextEncoder();

function mibps(bytes, ms) { return (bytes / MiB / (ms / 1000)).toFixed(1) + " MiB/s"; }

// ---------------------------------------------------------------- §1.1 cookie

/* "sftp:" + hex(SHA-256(lowercase(host) + ":" + port))[0..32] */
async function purposeFor(host, port) {
  const digest = await crypto.subtle.digest("SHA-256", enc.encode(host.toLowerCase() + ":" + port));
  return "sftp:" + hex(digest).slice(0, 32);
}

function leadingZeroBits(bytes) {
  let n = 0;
  for (const b of bytes) {
    if (b === 0) { n += 8; continue; }
    return n + Math.clz32(b) - 24;
  }
  return n;
}

let pureShaChecked = false;

/* The pure-JS SHA-256 must agree with WebCrypto before its answers count. */
async function checkPureSha() {
  if (pureShaChecked) return;
  for (const n of [0, 3, 55, 56, 61, 64, 100, 1000]) {
    const data = crypto.getRandomValues(new Uint8Array(n));
    const want = hex(await crypto.subtle.digest("SHA-256", data));
    need(hex(sha256(data)) === want, `pure-JS SHA-256 differs from WebCrypto for ${n} bytes`);
  }
  pureShaChecked = true;
}

/* GET the challenge, solve it, POST the answer: the browser keeps the
 * HttpOnly cookie itself. Same origin as this page. */
async function getCookie(host, port) {
  await checkPureSha();
  const purpose = await purposeFor(host, port);
  let r = await fetch("/relay/auth/challenge?purpose=" + encodeURIComponent(purpose),
                      { credentials: "same-origin", cache: "no-store" });
  need(r.status === 200, "challenge: HTTP " + r.status);
  const ch = await r.json();
  need(typeof ch.nonce_id === "string" && /^[0-9a-f]{32}$/.test(ch.nonce) &&
       Number.isInteger(ch.difficulty), "bad challenge " + JSON.stringify(ch));
  const prefix = new Uint8Array([...fromHex(ch.nonce), ...enc.encode(purpose)]);
  const ts = performance.now();
  const { answer, hashes } = solvePow(prefix, ch.difficulty);
  const ms = performance.now() - ts;
  // Check the answer with WebCrypto too.
  const msg = new Uint8Array(prefix.length + 8);
  msg.set(prefix);
  new DataView(msg.buffer).setBigUint64(prefix.length, BigInt(answer), true);
  const zeros = leadingZeroBits(new Uint8Array(await crypto.subtle.digest("SHA-256", msg)));
  need(zeros >= ch.difficulty, `answer ${answer} has ${zeros} zero bits < ${ch.difficulty}`);
  log(`proof of work: purpose ${purpose}, difficulty ${ch.difficulty}, answer ${answer} ` +
      `(${hashes} hashes in ${ms.toFixed(0)} ms)`);
  r = await fetch("/relay/auth", {
    method: "POST", credentials: "same-origin", cache: "no-store",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ nonce_id: ch.nonce_id, answer }),
  });
  need(r.status === 204, "POST /relay/auth: HTTP " + r.status);
  need(!document.cookie.includes("relay_auth_sftp"), "the relay cookie is visible to scripts");
  log("relay cookie stored by the browser (not readable by this script)");
  return purpose;
}

// ---------------------------------------------------------------- WebSocket

/* One relay WebSocket with an inbox: next() gives frames in order. */
class RelaySocket {
  constructor(url) {
    this.url = url;
    this.inbox = [];
    this.waiter = null;
    this.closed = null;   // {code, reason, wasClean} once closed
    this.opened = false;
    this.errored = false;
    this.nextId = 1;
    this.ws = new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    this.openPromise = new Promise((resolve, reject) => {
      this.ws.onopen = () => { this.opened = true; resolve(); };
      // A refused upgrade fires "error" and then "close": wait for the close.
      this.ws.onerror = () => { this.errored = true; };
      this.ws.onclose = (e) => {
        this.closed = { code: e.code, reason: e.reason, wasClean: e.wasClean };
        if (!this.opened) reject(Object.assign(new Error("WebSocket closed before open"),
                                               { refused: true, close: this.closed }));
        this._wake();
      };
    });
    this.ws.onmessage = (e) => {
      this.inbox.push(typeof e.data === "string"
        ? { kind: "text", data: JSON.parse(e.data) } : { kind: "binary", data: e.data });
      this._wake();
    };
  }

  _wake() {
    if (this.waiter) { const w = this.waiter; this.waiter = null; w(); }
  }

  /* Resolves on open; rejects (err.refused) when the upgrade is refused. */
  open(timeoutMs = 10000) {
    return Promise.race([this.openPromise, new Promise((_, reject) =>
      setTimeout(() => reject(new Error("WebSocket open timed out")), timeoutMs))]);
  }

  async next(timeoutMs = 60000) {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      if (this.inbox.length) return this.inbox.shift();
      if (this.closed) fail(`relay closed the WebSocket (code ${this.closed.code}` +
                            `${this.closed.reason ? ", " + this.closed.reason : ""})`);
      const left = deadline - performance.now();
      if (left <= 0) fail("no frame from the relay within " + timeoutMs + " ms");
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => { clearTimeout(timer); resolve(); };
      });
    }
  }

  async nextText(what) {
    const f = await this.next();
    need(f.kind === "text", `${what}: expected a text frame, got ${f.kind}`);
    return f.data;
  }

  send(obj) { this.ws.send(JSON.stringify(obj)); }

  /* Request/response (§3). `binary` is sent as the frame after the request.
   * Returns the whole response; throws on an error response unless
   * `allowError`. */
  async request(method, params, { binary = null, allowError = false } = {}) {
    const id = this.nextId++;
    this.send({ id, method, params });
    if (binary) this.ws.send(binary);
    const resp = await this.nextText(method);
    need(resp.id === id, `${method}: answer for id ${resp.id}, expected ${id}: ` +
                         JSON.stringify(resp));
    if (resp.error !== undefined && !allowError)
      fail(`${method} ${JSON.stringify(params)}: ${resp.error}`);
    return resp;
  }

  /* Close and wait for the close to finish. */
  async close() {
    if (this.closed) return;
    this.ws.close(1000);
    const deadline = performance.now() + 5000;
    while (!this.closed && performance.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
  }
}

function wsUrl(relay, host, port) {
  return `wss://${relay}/relay/ws?mode=sftp&host=${encodeURIComponent(host)}&port=${port}`;
}

/* The §2 handshake up to the host key decision: reads and checks the
 * host_key frame; the caller compares it with the pinned fingerprint. */
async function hostKeyStep(sock) {
  const hk = await sock.nextText("host_key");
  need(hk.type === "host_key", "expected host_key, got " + JSON.stringify(hk));
  need(/^SHA256:[A-Za-z0-9+/]{43}$/.test(hk.fingerprint), "bad fingerprint " + hk.fingerprint);
  need(hk.relay_version === 3, "relay_version " + hk.relay_version);
  log(`host_key ${hk.fingerprint} (${hk.key_type || "?"}), features ` +
      JSON.stringify(hk.features || []));
  return hk;
}

// ---------------------------------------------------------------- scenarios

const cfg = {
  host: params.get("host") || "127.0.0.1",
  port: parseInt(params.get("port") || "22", 10),
  fp: params.get("fp") || "",
  user: params.get("user") || "",
  key: params.get("key") || "",
  passphrase: params.get("passphrase"),
  dir: (params.get("dir") || "").replace(/\/+$/, ""),
  relay: params.get("relay") || location.host,
  sizeMiB: parseFloat(params.get("size_mib") || "50"),
  chunkMiB: parseFloat(params.get("chunk_mib") || "8"),
};

async function openSession(relay) {
  const sock = new RelaySocket(wsUrl(relay || cfg.relay, cfg.host, cfg.port));
  await sock.open();
  log("WebSocket open: " + sock.url);
  return sock;
}

async function login(sock) {
  const hk = await hostKeyStep(sock);
  need(hk.fingerprint === cfg.fp, `host key ${hk.fingerprint} is not the pinned ${cfg.fp}`);
  sock.send({ type: "host_key_accepted" });
  const resp = await sock.request("auth", {
    type: "publickey", username: cfg.user, privateKey: cfg.key,
    passphrase: cfg.passphrase || null,
  }, { allowError: true });
  need(resp.error === undefined, "auth: " + resp.error);
  log(`authenticated as ${cfg.user} with a private key`);
  return hk;
}

/* mkdir that treats "already exists" as success, as the app does.
 * Returns true when the directory was created, false when it existed. */
async function ensureDir(sock, path) {
  const resp = await sock.request("mkdir", { path }, { allowError: true });
  if (resp.error === undefined) return true;
  if (/already exists/.test(resp.error)) return false;
  fail(`mkdir ${path}: ${resp.error}`);
}

async function scenarioE2E() {
  need(cfg.dir && cfg.user && cfg.key && cfg.fp, "missing parameters");
  const size = Math.round(cfg.sizeMiB * MiB), chunk = Math.round(cfg.chunkMiB * MiB);

  // The file first: 64 KiB of random bytes per getRandomValues() call.
  const data = new Uint8Array(size);
  for (let off = 0; off < size; off += 64 * KiB)
    crypto.getRandomValues(data.subarray(off, Math.min(size, off + 64 * KiB)));
  const upDigest = hex(await crypto.subtle.digest("SHA-256", data));
  log(`generated ${size} random bytes, SHA-256 ${upDigest}`);

  await getCookie(cfg.host, cfg.port);
  const sock = await openSession();
  const hk = await login(sock);

  // Vault folders; the second mkdir of the root must say "already exists".
  const vault = cfg.dir + "/WattcloudVault";
  const folders = [vault, vault + "/data", vault + "/manifests", vault];
  const created = [];
  for (const f of folders) created.push(await ensureDir(sock, f));
  need(created.join() === "true,true,true,false",
       "mkdir results (created?) " + created.join());
  log("vault folders created; mkdir of an existing one answered 'already exists'");

  // Upload in write_chunk frames, waiting for each answer.
  const tmp = vault + "/data/blob.part", final = vault + "/data/blob.bin";
  const tu = performance.now();
  const { result: wo } = await sock.request("write_open", { path: tmp });
  need(/^wh-[0-9a-f]{32}$/.test(wo.handle), "write handle " + wo.handle);
  let chunks = 0;
  for (let off = 0; off < size; off += chunk) {
    const r = await sock.request("write_chunk", { handle: wo.handle },
                                 { binary: data.subarray(off, Math.min(size, off + chunk)) });
    need(JSON.stringify(r.result) === "{}", "write_chunk answer " + JSON.stringify(r));
    chunks++;
  }
  await sock.request("write_close", { handle: wo.handle });
  const upMs = performance.now() - tu;
  log(`uploaded ${size} bytes in ${chunks} write_chunk frames in ${upMs.toFixed(0)} ms ` +
      `(${mibps(size, upMs)})`);

  await sock.request("rename", { from: tmp, to: final });
  const { result: listing } = await sock.request("list", { path: vault + "/data" });
  const names = listing.entries.map((e) => e.name).sort();
  need(JSON.stringify(names) === '["blob.bin"]', "list: " + JSON.stringify(listing.entries));
  const entry = listing.entries[0];
  need(entry.size === size && entry.isDir === false && entry.path === final,
       "list entry " + JSON.stringify(entry));
  const { result: st } = await sock.request("stat", { path: final });
  need(st.size === size && st.isDir === false, "stat " + JSON.stringify(st));
  log(`renamed to ${final}; list and stat show ${entry.size} bytes`);

  // Streaming download.
  const td = performance.now();
  const { result: ro } = await sock.request("read_open", { path: final });
  need(/^rh-[0-9a-f]{32}$/.test(ro.handle), "read handle " + ro.handle);
  const down = new Uint8Array(size);
  let got = 0, reads = 0;
  for (;;) {
    const r = await sock.request("read_chunk", { handle: ro.handle });
    const n = r.result.size;
    const f = await sock.next();
    need(f.kind === "binary", "read_chunk: expected a binary frame, got " + f.kind);
    need(f.data.byteLength === n, `read_chunk said ${n} bytes, frame has ${f.data.byteLength}`);
    reads++;
    if (n === 0) break;
    need(n <= READ_CHUNK_MAX && got + n <= size, `read_chunk of ${n} bytes at ${got}`);
    need(n === READ_CHUNK_MAX || got + n === size, `short read_chunk of ${n} bytes at ${got}`);
    down.set(new Uint8Array(f.data), got);
    got += n;
  }
  await sock.request("read_close", { handle: ro.handle });
  const downMs = performance.now() - td;
  need(got === size, `downloaded ${got} bytes, expected ${size}`);
  const downDigest = hex(await crypto.subtle.digest("SHA-256", down));
  log(`downloaded ${got} bytes in ${reads} read_chunk answers in ${downMs.toFixed(0)} ms ` +
      `(${mibps(size, downMs)}), SHA-256 ${downDigest}`);
  need(downDigest === upDigest, `downloaded SHA-256 ${downDigest} != uploaded ${upDigest}`);

  await sock.close();
  log("WebSocket closed (code " + sock.closed.code + ")");
  finish(true, `sha256=${upDigest} size=${size} up=${mibps(size, upMs)} ` +
               `down=${mibps(size, downMs)}`,
         { sha256: upDigest, size, path: final, upMs, downMs, chunks, reads,
           fingerprint: hk.fingerprint, keyType: hk.key_type, features: hk.features });
}

/* Expect the upgrade to be refused: the browser sees error/close, never open. */
async function expectRefused(sock, what) {
  try {
    await sock.open();
  } catch (e) {
    if (!e.refused) throw e;
    log(`${what}: refused before open (error event ${sock.errored ? "seen" : "not seen"}, ` +
        `close code ${e.close.code})`);
    return e.close;
  }
  await sock.close();
  fail(what + ": the WebSocket opened");
}

/* A cookie is single use: a second WebSocket with it is refused. */
async function scenarioReuse() {
  await getCookie(cfg.host, cfg.port);
  const first = await openSession();
  await hostKeyStep(first);
  log("first WebSocket with the cookie got its host_key; opening a second with the same cookie");
  const second = new RelaySocket(wsUrl(cfg.relay, cfg.host, cfg.port));
  const close = await expectRefused(second, "second WebSocket");
  need(!first.closed, "the first session was closed too");
  await first.close();
  finish(true, "second WebSocket with the same cookie refused (close code " + close.code + ")",
         { closeCode: close.code });
}

/* This page is served from another origin than the relay it connects to:
 * the cookie is fine (same signing key, same site), the Origin is not. */
async function scenarioOrigin() {
  need(cfg.relay !== location.host, "origin: relay= must name another relay");
  await getCookie(cfg.host, cfg.port);
  const sock = new RelaySocket(wsUrl(cfg.relay, cfg.host, cfg.port));
  const close = await expectRefused(sock, `WebSocket from ${location.origin} to ${cfg.relay}`);
  finish(true, `upgrade from origin ${location.origin} refused (close code ${close.code})`,
         { closeCode: close.code, origin: location.origin });
}

/* Control for "origin": the cookie the other origin got (and could not
 * use) opens a session from the right origin, so the refusal was the
 * Origin's doing. No new proof of work here. */
async function scenarioOriginControl() {
  const sock = await openSession();
  const hk = await hostKeyStep(sock);
  await sock.close();
  finish(true, "the cookie from the other origin works from this origin",
         { fingerprint: hk.fingerprint });
}

/* A changed host key: the page must abort before sending any credential. */
async function scenarioHostKey() {
  need(cfg.fp, "missing fp");
  await getCookie(cfg.host, cfg.port);
  const sock = await openSession();
  const hk = await hostKeyStep(sock);
  need(hk.fingerprint !== cfg.fp, "the host key matches the pinned one; this scenario " +
                                  "needs a wrong pinned fingerprint");
  log(`host key changed: pinned ${cfg.fp}, server has ${hk.fingerprint}; ` +
      "aborting without sending credentials");
  await sock.close();
  need(sock.closed, "the WebSocket did not close");
  finish(true, "aborted on a changed host key before sending credentials",
         { fingerprint: hk.fingerprint, pinned: cfg.fp, closeCode: sock.closed.code });
}

// ---------------------------------------------------------------- `sign`

/* Make (or load) the browser's SSH key and show its authorized_keys line,
 * as the app's settings page would for the user to paste on the server. */
async function scenarioSignKey() {
  const key = await SshSign.loadOrCreate(params.get("keyname") || "default");
  log(`${key.fresh ? "generated" : "loaded from IndexedDB"} a non-extractable ${key.type} ` +
      `key (${key.fingerprint}); private key extractable: ${key.privateKey.extractable}`);
  need(key.privateKey.extractable === false, "the private key is extractable");
  document.getElementById("scenario").textContent = key.line;
  finish(true, key.fingerprint, { line: key.line, keyType: key.type,
                                  fingerprint: key.fingerprint, fresh: key.fresh });
}

/* Log in with the key from IndexedDB: publickey-sign, answer the
 * sign_request in the page, then a session (mkdir, upload, download,
 * compare). A refused login is a result too: the driver checks its error. */
async function scenarioSign() {
  need(cfg.dir && cfg.user && cfg.fp, "missing parameters");
  const how = params.get("answer") || "sign";
  const key = await SshSign.loadOrCreate(params.get("keyname") || "default");
  log(`${key.fresh ? "generated" : "loaded from IndexedDB"} ${key.type} key ${key.fingerprint}`);
  await getCookie(cfg.host, cfg.port);
  const sock = await openSession();
  const hk = await hostKeyStep(sock);
  need(hk.fingerprint === cfg.fp, `host key ${hk.fingerprint} is not the pinned ${cfg.fp}`);
  need((hk.features || []).includes("sign"), "the relay does not offer the sign extension");
  sock.send({ type: "host_key_accepted" });
  const id = sock.nextId++;
  sock.send({ id, method: "auth", params: SshSign.authParams(key, cfg.user) });
  let frame = await sock.nextText("auth");
  let signRequests = 0;
  if (frame.type === "sign_request") {
    signRequests++;
    log(`sign_request ${frame.request}: ${frame.algorithm}, ${atob(frame.data).length} bytes`);
    if (how === "sign") {
      sock.send(await SshSign.answer(key, frame, cfg.user));
      log("answered with a WebCrypto signature");
    } else if (how === "garbage") {
      // 64 bytes: as long as an Ed25519 or a P-256 signature.
      const junk = crypto.getRandomValues(new Uint8Array(64));
      sock.send({ type: "sign", request: frame.request,
                  signature: btoa(String.fromCharCode(...junk)) });
      log("answered with random bytes");
    } else {
      log("not answering");
    }
    frame = await sock.nextText("auth");
  }
  need(frame.id === id, "expected the auth answer, got " + JSON.stringify(frame));
  const base = { keyType: key.type, fingerprint: key.fingerprint, line: key.line,
                 fresh: key.fresh, signRequests, features: hk.features };
  if (frame.error !== undefined) {
    log(`auth refused: ${frame.error} (${frame.code})`);
    await sock.close();
    return finish(true, "refused: " + frame.error,
                  Object.assign(base, { authError: frame.error, authCode: frame.code }));
  }
  log(`authenticated as ${cfg.user} with ${key.type} key ${key.fingerprint}, ` +
      "the private key never left this page");

  const folder = cfg.dir + "/signed-" + Date.now();
  need(await ensureDir(sock, folder), "mkdir " + folder);
  const data = new Uint8Array(300 * KiB);
  for (let off = 0; off < data.length; off += 64 * KiB)  // getRandomValues' cap
    crypto.getRandomValues(data.subarray(off, off + 64 * KiB));
  const digest = hex(await crypto.subtle.digest("SHA-256", data));
  const path = folder + "/blob.bin";
  const { result: wo } = await sock.request("write_open", { path });
  await sock.request("write_chunk", { handle: wo.handle }, { binary: data });
  await sock.request("write_close", { handle: wo.handle });
  const { result: ro } = await sock.request("read_open", { path });
  const parts = [];
  for (;;) {
    const r = await sock.request("read_chunk", { handle: ro.handle });
    const f = await sock.next();
    need(f.kind === "binary" && f.data.byteLength === r.result.size, "read_chunk frame");
    if (r.result.size === 0) break;
    parts.push(new Uint8Array(f.data));
  }
  await sock.request("read_close", { handle: ro.handle });
  const back = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) { back.set(p, off); off += p.length; }
  const backDigest = hex(await crypto.subtle.digest("SHA-256", back));
  need(backDigest === digest, `downloaded SHA-256 ${backDigest} != uploaded ${digest}`);
  log(`uploaded and downloaded ${data.length} bytes in ${folder}, SHA-256 ${digest}`);
  await sock.close();
  finish(true, `signed in with ${key.type}, sha256=${digest}`,
         Object.assign(base, { path, sha256: digest, size: data.length }));
}

const SCENARIOS = {
  e2e: scenarioE2E, reuse: scenarioReuse, origin: scenarioOrigin,
  origin_control: scenarioOriginControl, hostkey: scenarioHostKey,
  sign_key: scenarioSignKey, sign: scenarioSign,
};

async function main() {
  document.getElementById("scenario").textContent = scenario + " on " + location.origin;
  const run = SCENARIOS[scenario];
  if (!run) return finish(false, "unknown scenario " + scenario);
  document.title = "RUNNING " + scenario;
  log(`scenario ${scenario}: target ${cfg.host}:${cfg.port} via ${cfg.relay}`);
  try {
    await run();
  } catch (e) {
    finish(false, e.message || String(e));
  }
}

main();
