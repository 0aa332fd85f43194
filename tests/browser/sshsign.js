/* sshsign.js: an SSH key that never leaves the browser, for the relay's
 * `sign` extension (docs/PROTOCOL-EXTENSIONS.md). Plain WebCrypto and
 * IndexedDB, no dependencies; the Wattcloud app may take this file as is.
 *
 *   const key = await SshSign.loadOrCreate("default");  // kept in IndexedDB
 *   key.line            // "ssh-ed25519 AAAA... wattcloud": for authorized_keys
 *   key.fingerprint     // "SHA256:...", as `ssh-keygen -l` prints it
 *
 *   // After host_key_accepted, when host_key.features includes "sign":
 *   ws.send(JSON.stringify({id: 1, method: "auth",
 *                           params: SshSign.authParams(key, username)}));
 *   // Then, for the one {"type":"sign_request",...} frame the relay sends:
 *   ws.send(JSON.stringify(await SshSign.answer(key, frame, username)));
 *   // ... and the auth answer {"id":1,"result":{}} follows.
 *
 * The key pair is generated non-extractable: the private key cannot be
 * exported, not even by this script; IndexedDB keeps the CryptoKey object
 * itself (browsers store it in their own key storage) for the next visit.
 * Ed25519 when the browser has it in WebCrypto, else ECDSA P-256.
 *
 * The wire messages (all JSON text frames):
 *   browser -> relay  {"id":N,"method":"auth","params":{"type":"publickey-sign",
 *                      "username":"u","publicKey":"<authorized_keys line>"}}
 *   relay -> browser  {"type":"sign_request","request":K,"algorithm":"ssh-ed25519",
 *                      "data":"<base64 of the bytes to sign>"}
 *   browser -> relay  {"type":"sign","request":K,"signature":"<base64 of exactly what
 *                      crypto.subtle.sign() returned>"}
 *   relay -> browser  {"id":N,"result":{}}  or  {"id":N,"error":"...","code":"..."}
 */
"use strict";

const SshSign = (() => {
  const DB_NAME = "wattcloud-ssh-keys", STORE = "keys";

  // The two kinds of key this module makes: SSH name, WebCrypto parameters.
  const KINDS = {
    "ssh-ed25519": { gen: { name: "Ed25519" }, sign: { name: "Ed25519" } },
    "ecdsa-sha2-nistp256": { gen: { name: "ECDSA", namedCurve: "P-256" },
                             sign: { name: "ECDSA", hash: "SHA-256" }, curve: "nistp256" },
  };

  const enc = new TextEncoder();

  function b64(bytes) {
    let s = "";
    for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
    return btoa(s);
  }

  function unb64(text) {
    return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  }

  function concat(parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let off = 0;
    for (const p of parts) { out.set(p, off); off += p.length; }
    return out;
  }

  // SSH "string": uint32 big-endian length, then the bytes (RFC 4251 §5).
  function sshString(bytes) {
    const b = typeof bytes === "string" ? enc.encode(bytes) : new Uint8Array(bytes);
    const len = new Uint8Array(4);
    new DataView(len.buffer).setUint32(0, b.length);
    return concat([len, b]);
  }

  function equal(a, b) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }

  // ---------------------------------------------------------------- IndexedDB

  function db() {
    return new Promise((resolve, reject) => {
      const req = indexedDB.open(DB_NAME, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(STORE);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }

  async function dbDo(mode, fn) {
    const d = await db();
    try {
      return await new Promise((resolve, reject) => {
        const tx = d.transaction(STORE, mode);
        const req = fn(tx.objectStore(STORE));
        tx.oncomplete = () => resolve(req.result);
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error);
      });
    } finally {
      d.close();
    }
  }

  // ---------------------------------------------------------------- keys

  /* The SSH public key blob: string type, [string curve], string key. */
  async function publicBlob(type, publicKey) {
    const raw = new Uint8Array(await crypto.subtle.exportKey("raw", publicKey));
    const parts = [sshString(type)];
    if (KINDS[type].curve) parts.push(sshString(KINDS[type].curve));
    parts.push(sshString(raw));
    return concat(parts);
  }

  async function describe(record) {
    const blob = await publicBlob(record.type, record.publicKey);
    const digest = await crypto.subtle.digest("SHA-256", blob);
    return Object.assign({}, record, {
      blob,
      line: `${record.type} ${b64(blob)} ${record.comment}`,
      fingerprint: "SHA256:" + b64(digest).replace(/=+$/, ""),
    });
  }

  /* A new non-extractable key pair; Ed25519 where WebCrypto has it. */
  async function generate(comment) {
    let lastError;
    for (const type of Object.keys(KINDS)) {
      try {
        const pair = await crypto.subtle.generateKey(KINDS[type].gen, false, ["sign", "verify"]);
        return { type, comment, privateKey: pair.privateKey, publicKey: pair.publicKey,
                 created: new Date().toISOString() };
      } catch (e) {
        lastError = e;  // this browser lacks the algorithm: try the next
      }
    }
    throw new Error("WebCrypto can make neither Ed25519 nor ECDSA keys: " + lastError);
  }

  /* The key stored under `name`, or a new one (then stored). The result
   * has line, fingerprint, type and the CryptoKeys; `fresh` says which. */
  async function loadOrCreate(name = "default", comment = "wattcloud") {
    let record = await dbDo("readonly", (s) => s.get(name));
    let fresh = false;
    if (!record) {
      record = await generate(comment);
      await dbDo("readwrite", (s) => s.put(record, name));
      fresh = true;
    }
    return Object.assign(await describe(record), { name, fresh });
  }

  async function remove(name = "default") {
    await dbDo("readwrite", (s) => s.delete(name));
  }

  // ---------------------------------------------------------------- protocol

  function authParams(key, username) {
    return { type: "publickey-sign", username, publicKey: key.line };
  }

  /* Check that `data` is SSH public-key authentication for this user and
   * this key (RFC 4252 §7) before signing it: string session id, byte 50,
   * string user, "ssh-connection", "publickey", byte 1, string algorithm,
   * string key blob. The relay checks this too; a page need not trust it. */
  function checkData(key, data, username, algorithm) {
    let off = 0;
    const str = () => {
      if (off + 4 > data.length) throw new Error("sign_request data cut short");
      const n = new DataView(data.buffer, data.byteOffset + off, 4).getUint32(0);
      if (off + 4 + n > data.length) throw new Error("sign_request data cut short");
      const v = data.subarray(off + 4, off + 4 + n);
      off += 4 + n;
      return v;
    };
    const byte = () => {
      if (off >= data.length) throw new Error("sign_request data cut short");
      return data[off++];
    };
    const sid = str();
    const ok = [20, 32, 48, 64].includes(sid.length) && byte() === 50 &&
      equal(str(), enc.encode(username)) && equal(str(), enc.encode("ssh-connection")) &&
      equal(str(), enc.encode("publickey")) && byte() === 1 &&
      equal(str(), enc.encode(algorithm)) && equal(str(), key.blob) && off === data.length;
    if (!ok) throw new Error("sign_request data is not a login of " + username + " with this key");
  }

  /* The answer to a sign_request frame. `opts.check` (default true) checks
   * the data first; tests turn it off to send what they like. */
  async function answer(key, frame, username, opts = {}) {
    if (frame.algorithm !== key.type)
      throw new Error(`sign_request wants ${frame.algorithm}, this key is ${key.type}`);
    const data = unb64(frame.data);
    if (opts.check !== false) checkData(key, data, username, frame.algorithm);
    const sig = await crypto.subtle.sign(KINDS[key.type].sign, key.privateKey, data);
    return { type: "sign", request: frame.request, signature: b64(sig) };
  }

  return { loadOrCreate, remove, authParams, answer, checkData, KINDS };
})();

window.SshSign = SshSign;
