// IndexedDB as JSON: the page's databases written out (a fixture made by an
// earlier release's page) and written back into a browser (the test that opens
// them with this release's page). Bytes are kept as base64.

/** Every IndexedDB database of the page's origin, as JSON-able data. */
export async function dumpIndexedDb(page) {
  return page.evaluate(async () => {
    const toBase64 = (bytes) => {
      let text = '';
      for (const b of bytes) text += String.fromCharCode(b);
      return btoa(text);
    };
    const encode = (value) => {
      if (value instanceof Uint8Array) return { $u8: toBase64(value) };
      if (value instanceof ArrayBuffer) return { $ab: toBase64(new Uint8Array(value)) };
      if (Array.isArray(value)) return value.map(encode);
      if (value && typeof value === 'object') {
        return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encode(v)]));
      }
      return value;
    };
    const request = (r) => new Promise((resolve, reject) => {
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
    const out = [];
    for (const { name, version } of await indexedDB.databases()) {
      const db = await request(indexedDB.open(name));
      const stores = {};
      for (const store of db.objectStoreNames) {
        const tx = db.transaction(store, 'readonly');
        const keys = await request(tx.objectStore(store).getAllKeys());
        const values = await request(tx.objectStore(store).getAll());
        stores[store] = keys.map((key, i) => [encode(key), encode(values[i])]);
      }
      db.close();
      out.push({ name, version, stores });
    }
    return out;
  });
}

/** Writes `databases` (as `dumpIndexedDb` gave them) into the page's origin. */
export async function restoreIndexedDb(page, databases) {
  await page.evaluate(async (dbs) => {
    const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
    const decode = (value) => {
      if (Array.isArray(value)) return value.map(decode);
      if (value && typeof value === 'object') {
        if ('$u8' in value) return fromBase64(value.$u8);
        if ('$ab' in value) return fromBase64(value.$ab).buffer;
        return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, decode(v)]));
      }
      return value;
    };
    for (const { name, version, stores } of dbs) {
      const db = await new Promise((resolve, reject) => {
        const open = indexedDB.open(name, version);
        open.onupgradeneeded = () => {
          for (const store of Object.keys(stores)) open.result.createObjectStore(store);
        };
        open.onsuccess = () => resolve(open.result);
        open.onerror = () => reject(open.error);
      });
      for (const [store, entries] of Object.entries(stores)) {
        const tx = db.transaction(store, 'readwrite');
        for (const [key, value] of entries) tx.objectStore(store).put(decode(value), decode(key));
        await new Promise((resolve, reject) => {
          tx.oncomplete = resolve;
          tx.onerror = () => reject(tx.error);
        });
      }
      db.close();
    }
  }, databases);
}
