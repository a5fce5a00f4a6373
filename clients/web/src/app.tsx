// The screens. They draw what the engine derives and hand input to it; no rule
// is decided here.
import { useCallback, useEffect, useMemo, useRef, useState } from 'preact/hooks';
import type { ComponentChildren } from 'preact';
import { LoginRefused, PageSync, asRefusal, type EngineEvent } from './sync';
import { eventText, flagText, formatTime, isOpenPhase, isRace, optionText, phaseText, t, type Key, type Lang } from './i18n';
import { Dashboard, isManager } from './dashboard';
import { Admin, isAdmin } from './admin';
import { Recording } from './recording';
import {
  answerOf,
  eventKind,
  type RpcCall,
  type RpcResult,
  type CallView,
  type CustomerDetail,
  type CustomerListing,
  type CustomerSummary,
  type ResultCatalog,
  type ResultForm,
  type OptionKind,
  type DeviceSummary,
  type RecallSummary,
  type ResultTypeSpec,
  type TimelineEntry,
} from './types';

type Route =
  | { screen: 'customers' }
  | { screen: 'customer'; id: string; tab: 'call' | 'timeline' | 'history'; call?: string }
  | { screen: 'recalls' }
  | { screen: 'dashboard' }
  | { screen: 'admin' };

function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (parts[0] === 'customers' && parts[1]) {
    const tab = parts[2] === 'timeline' || parts[2] === 'history' ? parts[2] : 'call';
    return parts[3] ? { screen: 'customer', id: parts[1], tab, call: parts[3] } : { screen: 'customer', id: parts[1], tab };
  }
  if (parts[0] === 'recalls') return { screen: 'recalls' };
  if (parts[0] === 'dashboard') return { screen: 'dashboard' };
  if (parts[0] === 'admin') return { screen: 'admin' };
  return { screen: 'customers' };
}

function go(path: string): void {
  location.hash = `#/${path}`;
}

/**
 * Redraws on every batch of engine events; returns the batch count. Batches
 * emitted between the first render and the subscription (the connection can
 * come up in between) are caught by comparing the count once subscribed.
 */
function useEngine(sync: PageSync): number {
  const [tick, setTick] = useState(sync.version);
  useEffect(() => {
    const unsubscribe = sync.subscribe(() => setTick(sync.version));
    setTick(sync.version);
    return unsubscribe;
  }, [sync]);
  return tick;
}

/**
 * Asks the server `call` each time the page comes online (the engine holds a
 * question asked offline until it joins, re-sends one lost with a dropped
 * connection, and gives up on one unanswered: asked again 2 s later);
 * `onResult` gets the answer (a refusal is one). `call` is compared by its
 * JSON, so a literal is fine.
 */
function useAskWhenOnline(sync: PageSync, call: RpcCall, onResult?: (result: RpcResult) => void): void {
  const online = sync.online;
  const key = JSON.stringify(call);
  const handle = useRef(onResult);
  handle.current = onResult;
  const [retries, setRetries] = useState(0);
  useEffect(() => {
    if (!online) return undefined;
    let live = true;
    let retry: ReturnType<typeof setTimeout> | undefined;
    sync.ask(JSON.parse(key) as RpcCall).then(
      (result) => {
        if (live) handle.current?.(result);
      },
      () => {
        if (live) retry = setTimeout(() => setRetries((n) => n + 1), 2_000);
      },
    );
    return () => {
      live = false;
      clearTimeout(retry);
    };
  }, [online, sync, key, retries]);
}

/** Seconds since `since`, ticking every second. */
function useElapsed(since: number | null): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (since === null) return undefined;
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, [since]);
  return since === null ? 0 : Math.max(0, Math.floor((now - since) / 1000));
}

function mmss(seconds: number): string {
  return `${String(Math.floor(seconds / 60)).padStart(2, '0')}:${String(seconds % 60).padStart(2, '0')}`;
}

export function App() {
  const [lang, setLang] = useState<Lang>(() => (localStorage.getItem('lang') === 'en' ? 'en' : 'ja'));
  const [sync, setSync] = useState<PageSync | undefined>();
  const [checked, setChecked] = useState(false);
  /** Why the last session ended, said on the login screen. */
  const [ended, setEnded] = useState<{ message: string; messageJa: string } | undefined>();
  useEffect(() => {
    document.documentElement.lang = lang;
    localStorage.setItem('lang', lang);
  }, [lang]);
  useEffect(() => {
    void PageSync.openCurrent().then((opened) => {
      if (opened && opened.state.stopped?.needsLogin) {
        setEnded(opened.state.stopped);
        opened.close();
      } else {
        setSync(opened);
      }
      setChecked(true);
    });
  }, []);
  useEffect(() => {
    if (!sync) return undefined;
    // The engine stops a session only the rep can move on: back to the login,
    // saying why, with no customer data on screen (unsent work stays stored).
    return sync.subscribe(() => {
      const stopped = sync.state.stopped;
      if (sync.state.phase === 'stopped' && stopped?.needsLogin && stopped.reason !== 'logged-out') {
        setEnded(stopped);
        sync.close();
        setSync(undefined);
      }
    });
  }, [sync]);
  const toggle = () => setLang(lang === 'ja' ? 'en' : 'ja');
  if (!checked) return <p class="loading">{t(lang, 'loading')}</p>;
  if (!sync) {
    return (
      <Login
        lang={lang}
        toggle={toggle}
        ended={ended}
        onLoggedIn={(opened) => {
          setEnded(undefined);
          setSync(opened);
        }}
      />
    );
  }
  return (
    <Shell
      lang={lang}
      toggle={toggle}
      sync={sync}
      onLogOut={async () => {
        await sync.logOut();
        sync.close();
        setSync(undefined);
      }}
    />
  );
}

function LangSwitch({ lang, toggle }: { lang: Lang; toggle: () => void }) {
  return (
    // The switch names the other language in that language.
    <button type="button" class="link" onClick={toggle} lang={lang === 'ja' ? 'en' : 'ja'}>
      {t(lang, 'language')}
    </button>
  );
}

function Login({
  lang,
  toggle,
  ended,
  onLoggedIn,
}: {
  lang: Lang;
  toggle: () => void;
  ended?: { message: string; messageJa: string } | undefined;
  onLoggedIn: (sync: PageSync) => void;
}) {
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | undefined>();
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      onLoggedIn(await PageSync.logIn(email.trim(), password));
    } catch (err) {
      const refusal = err instanceof LoginRefused ? err.refusal : asRefusal(err);
      setError(lang === 'ja' ? refusal.messageJa : refusal.message);
      setBusy(false);
    }
  };
  const shown = error ?? (ended ? (lang === 'ja' ? ended.messageJa : ended.message) : undefined);
  return (
    <main class="login">
      <div class="topline">
        <h1>{t(lang, 'appName')}</h1>
        <LangSwitch lang={lang} toggle={toggle} />
      </div>
      <form onSubmit={submit} aria-describedby={shown ? 'login-error' : undefined}>
        <label>
          {t(lang, 'email')}
          <input type="email" autocomplete="username" required value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
        </label>
        <label>
          {t(lang, 'password')}
          <input type="password" autocomplete="current-password" required value={password} onInput={(e) => setPassword(e.currentTarget.value)} />
        </label>
        <button type="submit" class="primary" disabled={busy}>
          {busy ? t(lang, 'loggingIn') : t(lang, 'logIn')}
        </button>
        {shown && (
          <p id="login-error" class="error" role="alert">
            {shown}
          </p>
        )}
      </form>
    </main>
  );
}

function Shell({ lang, toggle, sync, onLogOut }: { lang: Lang; toggle: () => void; sync: PageSync; onLogOut: () => Promise<void> }) {
  const [route, setRoute] = useState<Route>(() => parseRoute(location.hash));
  useEffect(() => {
    const onHash = () => setRoute(parseRoute(location.hash));
    addEventListener('hashchange', onHash);
    return () => removeEventListener('hashchange', onHash);
  }, []);
  useEngine(sync);
  const [unsent, setUnsent] = useState<number | undefined>();
  const [leaving, setLeaving] = useState(false);
  const [storageFailed, setStorageFailed] = useState<{ message: string; messageJa: string } | undefined>();
  useEffect(
    () =>
      sync.subscribe((events) => {
        for (const e of events) {
          if (e.event === 'storage-failed') setStorageFailed({ message: String(e.message), messageJa: String(e.messageJa) });
        }
      }),
    [sync],
  );
  const confirmLogOut = async () => {
    const { results } = await sync.unsent();
    if (results > 0) setUnsent(results);
    else await leave();
  };
  const leave = async () => {
    setLeaving(true);
    await onLogOut();
  };
  const connection = sync.online ? 'online' : sync.state.phase === 'connecting' ? 'connecting' : 'offline';
  return (
    <>
      {unsent !== undefined && (
        <div class="result-dialog" role="alertdialog" aria-modal="true" aria-labelledby="unsent-title" aria-describedby="unsent-text">
          <div class="result-form">
            <h3 id="unsent-title">{t(lang, 'logOut')}</h3>
            <p id="unsent-text">{t(lang, sync.online ? 'unsentOnline' : 'unsentOffline').replace('{n}', String(unsent))}</p>
            <button type="button" class="primary" disabled={leaving} onClick={() => void leave()}>
              {t(lang, 'logOutAnyway')}
            </button>
            <button type="button" onClick={() => setUnsent(undefined)}>
              {t(lang, 'back')}
            </button>
          </div>
        </div>
      )}
      <header>
        <nav aria-label={t(lang, 'appName')}>
          <strong>{t(lang, 'appName')}</strong>
          <a href="#/customers" aria-current={route.screen === 'customers' || route.screen === 'customer' ? 'page' : undefined}>
            {t(lang, 'customers')}
          </a>
          <a href="#/recalls" aria-current={route.screen === 'recalls' ? 'page' : undefined}>
            {t(lang, 'recalls')}
          </a>
          {isManager(sync.login.role) && (
            <a href="#/dashboard" aria-current={route.screen === 'dashboard' ? 'page' : undefined}>
              {t(lang, 'dashboard')}
            </a>
          )}
          {isAdmin(sync.login.role) && (
            <a href="#/admin" aria-current={route.screen === 'admin' ? 'page' : undefined}>
              {t(lang, 'admin')}
            </a>
          )}
        </nav>
        <div class="who">
          <span class={`badge ${connection}`} role="status" data-testid="connection">
            {t(lang, connection)}
          </span>
          <span>{sync.login.user}</span>
          <LangSwitch lang={lang} toggle={toggle} />
          <button type="button" class="link" onClick={() => void confirmLogOut()}>
            {t(lang, 'logOut')}
          </button>
        </div>
      </header>
      <main>
        {storageFailed && (
          <p class="alert" role="alert" data-testid="storage-failed">
            {lang === 'ja' ? storageFailed.messageJa : storageFailed.message}
          </p>
        )}
        {route.screen === 'customers' && <CustomerList lang={lang} sync={sync} />}
        {route.screen === 'customer' && <CustomerScreen lang={lang} sync={sync} route={route} />}
        {route.screen === 'recalls' && <Recalls lang={lang} sync={sync} />}
        {route.screen === 'dashboard' && <Dashboard lang={lang} sync={sync} />}
        {route.screen === 'admin' && (isAdmin(sync.login.role) ? <Admin lang={lang} sync={sync} /> : <p role="alert">{t(lang, 'adminOnly')}</p>)}
      </main>
    </>
  );
}

function CustomerList({ lang, sync }: { lang: Lang; sync: PageSync }) {
  const tick = useEngine(sync);
  const online = sync.online;
  const [query, setQuery] = useState('');
  // Online, the server pages and searches (the engine keeps the cursor); a
  // search waits for the rep to pause typing. Offline, the engine lists what
  // this device last saw and holds.
  useEffect(() => {
    if (!online) return undefined;
    const timer = setTimeout(() => void sync.call((d) => d.listCustomers(Date.now(), query)), query ? 250 : 0);
    return () => clearTimeout(timer);
  }, [online, query, sync]);
  const listing = useMemo(
    () => JSON.parse(sync.device.customerListing()) as CustomerListing,
    [tick, sync],
  );
  const local = useMemo(() => JSON.parse(sync.device.localCustomers(query)) as CustomerSummary[], [tick, sync, query]);
  const fromServer = online && (listing.rows.length > 0 || !listing.loading);
  const shown = fromServer ? listing.rows : local;
  return (
    <section aria-labelledby="customers-title">
      <h2 id="customers-title">{t(lang, 'customers')}</h2>
      <label class="search">
        {t(lang, 'search')}
        <input type="search" value={query} onInput={(e) => setQuery(e.currentTarget.value)} />
      </label>
      {shown.length === 0 ? (
        <p>{t(lang, 'noCustomers')}</p>
      ) : (
        <table>
          <thead>
            <tr>
              <th scope="col">{t(lang, 'company')}</th>
              <th scope="col">{t(lang, 'contact')}</th>
              <th scope="col">{t(lang, 'owner')}</th>
              <th scope="col">{t(lang, 'status')}</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((c) => (
              <tr key={c.id}>
                <td>
                  <a href={`#/customers/${encodeURIComponent(c.id)}`}>{c.company}</a>
                </td>
                <td>{c.contact}</td>
                <td>{c.owner}</td>
                <td>{c.status}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {fromServer && !listing.complete && (
        <button type="button" disabled={listing.loading} onClick={() => void sync.call((d) => d.moreCustomers(Date.now()))}>
          {listing.loading ? t(lang, 'loading') : t(lang, 'moreCustomers')}
        </button>
      )}
    </section>
  );
}

function CustomerScreen({ lang, sync, route }: { lang: Lang; sync: PageSync; route: Extract<Route, { screen: 'customer' }> }) {
  const tick = useEngine(sync);
  const online = sync.online;
  // Opening a customer replicates its document to this browser from now on.
  useAskWhenOnline(sync, { method: 'subscribe', documents: [route.id] });
  const detail = useMemo(() => JSON.parse(sync.device.customer(route.id)) as CustomerDetail | null, [tick, route.id, sync]);
  if (!detail) return <p role="status">{online ? t(lang, 'loading') : t(lang, 'notHeld')}</p>;
  const { customer } = detail;
  const label = resultLabels(lang, sync);
  const base = `customers/${encodeURIComponent(customer.id)}`;
  const tabs: [typeof route.tab, Key][] = [
    ['call', 'callTab'],
    ['timeline', 'timelineTab'],
    ['history', 'historyTab'],
  ];
  return (
    <section aria-labelledby="customer-title">
      <h2 id="customer-title">{customer.company}</h2>
      <p class="sub">
        {customer.contact}{t(lang, 'sep')}{t(lang, 'status')}: {customer.status}
      </p>
      <div role="tablist" aria-label={customer.company}>
        {tabs.map(([tab, key]) => (
          <button
            key={tab}
            type="button"
            role="tab"
            id={`tab-${tab}`}
            aria-selected={route.tab === tab}
            aria-controls={`panel-${tab}`}
            // The tab list is one stop for Tab; the arrows, Home and End move
            // between its tabs (WAI-ARIA's tabs pattern, activated on focus).
            tabIndex={route.tab === tab ? 0 : -1}
            onClick={() => go(tab === 'call' ? base : `${base}/${tab}`)}
            onKeyDown={(e) => {
              const at = tabs.findIndex(([id]) => id === tab);
              const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[e.key];
              if (to === undefined) return;
              e.preventDefault();
              const next = tabs[(to + tabs.length) % tabs.length]?.[0] ?? tab;
              go(next === 'call' ? base : `${base}/${next}`);
              document.getElementById(`tab-${next}`)?.focus();
            }}
          >
            {t(lang, key)}
          </button>
        ))}
      </div>
      <div role="tabpanel" id={`panel-${route.tab}`} aria-labelledby={`tab-${route.tab}`}>
        {route.tab === 'call' && <CallTab lang={lang} sync={sync} detail={detail} />}
        {route.tab === 'timeline' && <Timeline lang={lang} sync={sync} detail={detail} label={label} />}
        {route.tab === 'history' &&
          (route.call ? (
            <CallDetail lang={lang} sync={sync} detail={detail} call={route.call} back={`${base}/history`} label={label} />
          ) : (
            <History lang={lang} detail={detail} base={base} label={label} />
          ))}
      </div>
    </section>
  );
}

function Alert({ children }: { children: ComponentChildren }) {
  return (
    <p class="alert" role="alert">
      {children}
    </p>
  );
}

function CallTab({ lang, sync, detail }: { lang: Lang; sync: PageSync; detail: CustomerDetail }) {
  const { customer } = detail;
  const mine = customer.calls.filter((c) => c.origin_stamp.user === sync.login.user);
  const open = [...mine].reverse().find((c) => isOpenPhase(c.phase));
  const last = mine[mine.length - 1];
  const [error, setError] = useState<string | undefined>();
  const [notice, setNotice] = useState<Key | undefined>();
  const [manual, setManual] = useState(false);
  const act = useCallback(
    async (action: () => Promise<unknown>) => {
      setError(undefined);
      try {
        await action();
      } catch (err) {
        const refusal = asRefusal(err);
        setError(lang === 'ja' ? refusal.messageJa : refusal.message);
      }
    },
    [lang],
  );
  const event = (call: CallView, what: string) => act(() => sync.act((d) => d.callEvent(Date.now(), customer.id, call.call, what)));
  const lastEnded = last && !open && (last.phase === 'expired' || last.phase === 'cancelled') ? last : undefined;
  return (
    <div class="call-tab">
      {error && <Alert>{error}</Alert>}
      {notice && (
        <p class="notice" role="status">
          {t(lang, notice)}
        </p>
      )}
      {open?.flags.filter(isRace).map((f) => (
        <Alert key={f}>{flagText(lang, f)}</Alert>
      ))}
      {lastEnded?.phase === 'expired' && <Alert>{t(lang, 'startLimitPassed')}</Alert>}
      {lastEnded?.phase === 'cancelled' && !lastEnded.flags.some(isRace) && (
        <p class="notice" role="status">
          {t(lang, 'cancelledMessage')}
        </p>
      )}
      {lastEnded?.flags.filter(isRace).map((f) => (
        <Alert key={f}>{flagText(lang, f)}</Alert>
      ))}
      {!open && !manual && <CallForm lang={lang} sync={sync} detail={detail} act={act} />}
      {!open && !manual && (
        <button type="button" onClick={() => setManual(true)}>
          {t(lang, 'manualCall')}
        </button>
      )}
      {!open && manual && (
        <ManualCall
          lang={lang}
          sync={sync}
          detail={detail}
          onDone={(offline) => {
            setManual(false);
            setNotice(offline ? 'savedOffline' : 'saved');
          }}
          onCancel={() => setManual(false)}
        />
      )}
      {open?.phase === 'awaiting-start' && (
        <div class="waiting" role="status" data-testid="waiting">
          <p>{t(lang, 'waiting')}</p>
          <button type="button" onClick={() => void event(open, 'cancelled')}>
            {t(lang, 'cancelCall')}
          </button>
        </div>
      )}
      {open && (open.phase === 'in-call' || open.phase === 'phone-ended') && (
        <CallBar lang={lang} call={open} onEnd={() => void event(open, 'browser-ended')} />
      )}
      {open?.phase === 'browser-ended' && <p role="status">{t(lang, 'endOnPhoneFirst')}</p>}
      {open?.phase === 'awaiting-result' && (
        <ResultForm
          lang={lang}
          sync={sync}
          save={(form) => sync.saveResult((d) => d.saveResult(Date.now(), customer.id, open.call, form))}
          onSaved={(offline) => setNotice(offline ? 'savedOffline' : 'saved')}
        />
      )}
    </div>
  );
}

function CallForm({
  lang,
  sync,
  detail,
  act,
}: {
  lang: Lang;
  sync: PageSync;
  detail: CustomerDetail;
  act: (action: () => Promise<unknown>) => Promise<void>;
}) {
  const { customer } = detail;
  const [destination, setDestination] = useState(customer.phones[0]?.number ?? '');
  const [origin, setOrigin] = useState('');
  const [recording, setRecording] = useState(true);
  const [phones, setPhones] = useState<DeviceSummary[]>([]);
  useAskWhenOnline(sync, { method: 'devices' }, (result) => {
    const devices = (answerOf(result, 'devices') ?? []).filter((d) => d.kind === 'phone');
    setPhones(devices);
    setOrigin((current) => current || devices[0]?.id || '');
  });
  useEffect(
    () =>
      sync.subscribe((events: EngineEvent[]) => {
        for (const e of events) {
          if (e.event === 'presence' && e.kind === 'phone') {
            setPhones((list) => {
              const known = list.some((d) => d.id === e.device);
              const updated = list.map((d) => (d.id === e.device ? { ...d, online: Boolean(e.online) } : d));
              return known ? updated : [...updated, { id: String(e.device), kind: 'phone', online: Boolean(e.online) }];
            });
            setOrigin((current) => current || String(e.device));
          }
        }
      }),
    [sync],
  );
  const phone = phones.find((d) => d.id === origin);
  const submit = (e: Event) => {
    e.preventDefault();
    void act(() =>
      sync.act((d) => d.requestCall(Date.now(), customer.id, destination, origin, recording)),
    );
  };
  return (
    <form class="call-form" onSubmit={submit}>
      <label>
        {t(lang, 'destination')}
        <select value={destination} onChange={(e) => setDestination(e.currentTarget.value)} required>
          {customer.phones.map((p) => (
            <option key={p.number} value={p.number}>
              {p.label} {p.number}
            </option>
          ))}
        </select>
      </label>
      <label>
        {t(lang, 'origin')}
        <select value={origin} onChange={(e) => setOrigin(e.currentTarget.value)} required>
          {phones.length === 0 && <option value="">{t(lang, sync.online ? 'noPhone' : 'phonesUnknown')}</option>}
          {phones.map((d) => (
            <option key={d.id} value={d.id}>
              {d.id}
            </option>
          ))}
        </select>
      </label>
      {phone && (
        <p class={phone.online ? 'presence online' : 'presence offline'} role="status" data-testid="presence">
          {phone.online ? t(lang, 'phoneOnline') : t(lang, 'phoneOffline')}
        </p>
      )}
      <label class="switch">
        <input type="checkbox" role="switch" checked={recording} onChange={(e) => setRecording(e.currentTarget.checked)} />
        {t(lang, 'recording')}
      </label>
      <button type="submit" class="primary" disabled={!origin || !destination}>
        {t(lang, 'callCustomer')}
      </button>
    </form>
  );
}

/** 手動コール: a call made outside the system, logged with its result. */
function ManualCall({
  lang,
  sync,
  detail,
  onDone,
  onCancel,
}: {
  lang: Lang;
  sync: PageSync;
  detail: CustomerDetail;
  onDone: (offline: boolean) => void;
  onCancel: () => void;
}) {
  const { customer } = detail;
  const [number, setNumber] = useState(customer.phones[0]?.number ?? '');
  return (
    <ResultForm
      lang={lang}
      sync={sync}
      title="manualCall"
      save={(form) => sync.saveResult((d) => d.manualCall(Date.now(), customer.id, number, form))}
      onSaved={onDone}
      onCancel={onCancel}
    >
      <label>
        {t(lang, 'destination')}
        <input type="tel" required value={number} onInput={(e) => setNumber(e.currentTarget.value)} />
      </label>
    </ResultForm>
  );
}

function CallBar({ lang, call, onEnd }: { lang: Lang; call: CallView; onEnd: () => void }) {
  const elapsed = useElapsed(call.started_at);
  return (
    <div class="call-bar" role="region" aria-label={t(lang, 'inCall')} data-testid="call-bar">
      <span class="dot" aria-hidden="true" />
      <span>
        {phaseText(lang, call.phase)} <time>{mmss(elapsed)}</time>
      </span>
      <button type="button" class="end" onClick={onEnd}>
        {t(lang, 'endCall')}
      </button>
    </div>
  );
}

/** The 5-minute steps of a day, as HH:MM. */
const TIMES = Array.from({ length: 24 * 12 }, (_, i) => `${String(Math.floor(i / 12)).padStart(2, '0')}:${String((i % 12) * 5).padStart(2, '0')}`);

/** A date (YYYY-MM-DD) and time (HH:MM) in Japan, as UTC milliseconds. */
function tokyoMillis(date: string, time: string): number {
  return Date.parse(`${date}T${time}:00+09:00`);
}

function ResultForm({
  lang,
  sync,
  save,
  onSaved,
  title = 'resultTitle',
  onCancel,
  children,
}: {
  lang: Lang;
  sync: PageSync;
  /** Saves the form (its JSON) through the engine's result flow. */
  save: (form: string) => Promise<{ kept: string | null }>;
  onSaved: (offline: boolean) => void;
  title?: Key;
  /** Given for a form the rep opened by choice (a manual call); a call's result form has none. */
  onCancel?: () => void;
  children?: ComponentChildren;
}) {
  const types = useMemo(() => (JSON.parse(sync.device.resultTypes()) as ResultCatalog).types, [sync]);
  const [type, setType] = useState('');
  const [option, setOption] = useState<OptionKind>('none');
  const [date, setDate] = useState('');
  const [time, setTime] = useState('10:00');
  const [status, setStatus] = useState('');
  const [memo, setMemo] = useState('');
  const [error, setError] = useState<string | undefined>();
  const spec = types.find((s) => s.id === type);
  // The tenant's statuses: those its result types set.
  const statuses = [...new Set(types.map((s) => s.default_status).filter((v): v is string => Boolean(v)))];
  const first = useRef<HTMLSelectElement>(null);
  useEffect(() => first.current?.focus(), []);
  const pick = (id: string) => {
    setType(id);
    setOption('none');
    setStatus(types.find((s) => s.id === id)?.default_status ?? '');
  };
  const submit = async (e: Event) => {
    e.preventDefault();
    if (!spec) {
      setError(t(lang, 'pickResult'));
      return;
    }
    setError(undefined);
    const at = option === 'none' ? undefined : tokyoMillis(date, time);
    // The engine decides the rest: the server's rules when online, the pick as
    // made (and why) when not.
    const form: ResultForm = {
      resultType: spec.id,
      option,
      at: at ?? null,
      customerStatus: status || null,
      memo,
    };
    try {
      const saved = await save(JSON.stringify(form));
      onSaved(saved.kept !== null);
    } catch (err) {
      const refusal = asRefusal(err);
      setError(lang === 'ja' ? refusal.messageJa : refusal.message);
    }
  };
  return (
    <div
      class="result-dialog"
      role="dialog"
      aria-modal="true"
      aria-labelledby="result-title"
      aria-describedby={onCancel ? undefined : 'result-required'}
      onKeyDown={(e) => {
        // A call's result form cannot be dismissed: saving is mandatory.
        if (e.key === 'Escape') {
          e.preventDefault();
          onCancel?.();
        }
      }}
    >
    <form class="result-form" onSubmit={submit}>
      <h3 id="result-title">{t(lang, title)}</h3>
      {!onCancel && (
        <p id="result-required" class="required">
          {t(lang, 'resultRequired')}
        </p>
      )}
      {error && <Alert>{error}</Alert>}
      {children}
      <label>
        {t(lang, 'resultType')}
        <select ref={first} value={type} onChange={(e) => pick(e.currentTarget.value)}>
          <option value="">—</option>
          {types.map((s) => (
            <option key={s.id} value={s.id}>
              {lang === 'ja' ? s.label_ja : s.label_en}
            </option>
          ))}
        </select>
      </label>
      <fieldset disabled={!spec || spec.options.length === 0}>
        <legend>{t(lang, 'resultOption')}</legend>
        {(['none', ...(spec?.options ?? []).filter((o) => o !== 'none')] as OptionKind[]).map((o) => (
          <label key={o} class="inline">
            <input type="radio" name="option" value={o} checked={option === o} onChange={() => setOption(o)} />
            {optionText(lang, o)}
          </label>
        ))}
      </fieldset>
      {option !== 'none' && (
        <fieldset>
          <legend>{t(lang, 'date')}</legend>
          <label class="inline">
            {t(lang, 'date')}
            <input type="date" required value={date} onInput={(e) => setDate(e.currentTarget.value)} />
          </label>
          <label class="inline">
            {t(lang, 'time')}
            <select value={time} onChange={(e) => setTime(e.currentTarget.value)}>
              {TIMES.map((v) => (
                <option key={v} value={v}>
                  {v}
                </option>
              ))}
            </select>
          </label>
        </fieldset>
      )}
      <label>
        {t(lang, 'customerStatus')}
        <select value={status} onChange={(e) => setStatus(e.currentTarget.value)}>
          <option value="">{t(lang, 'statusUnchanged')}</option>
          {statuses.map((v) => (
            <option key={v} value={v}>
              {v}
            </option>
          ))}
        </select>
      </label>
      <label>
        {t(lang, 'memo')}
        <textarea value={memo} onInput={(e) => setMemo(e.currentTarget.value)} />
      </label>
      <button type="submit" class="primary">
        {t(lang, 'save')}
      </button>
      {onCancel && (
        <button type="button" onClick={onCancel}>
          {t(lang, 'back')}
        </button>
      )}
    </form>
    </div>
  );
}

/** A result type's label in the page's language (its id if the tenant has no such type). */
type Labels = (id: string) => string;

function resultLabels(lang: Lang, sync: PageSync): Labels {
  const types = (JSON.parse(sync.device.resultTypes()) as ResultCatalog).types;
  return (id) => {
    const spec = types.find((s) => s.id === id);
    return spec ? (lang === 'ja' ? spec.label_ja : spec.label_en) : id;
  };
}

function Timeline({ lang, sync, detail, label }: { lang: Lang; sync: PageSync; detail: CustomerDetail; label: Labels }) {
  if (detail.timeline.length === 0) return <p>{t(lang, 'noCalls')}</p>;
  // Each recorded call's recording (its state, its player) shows once: at its
  // `recording-attached` event once stored (an entry that stays put while
  // later events arrive, so a player keeps playing), else at the call's
  // latest event.
  const anchors = new Map<string, string>();
  const attached = new Set<string>();
  for (const entry of detail.timeline) {
    if (attached.has(entry.call)) continue;
    anchors.set(entry.call, entry.event);
    if (eventKind(entry.kind) === 'recording-attached') attached.add(entry.call);
  }
  return (
    <ol class="timeline">
      {[...detail.timeline].reverse().map((entry) => {
        const view = anchors.get(entry.call) === entry.event ? detail.customer.calls.find((c) => c.call === entry.call) : undefined;
        return (
          <li key={entry.event}>
            <time>{formatTime(lang, entry.stamp.at)}</time> {eventText(lang, eventKind(entry.kind))}
            <EventDetail lang={lang} kind={entry.kind} label={label} />
            {t(lang, 'sep')}
            {entry.stamp.user} ({entry.stamp.device})
            {view && <Recording lang={lang} sync={sync} detail={detail} view={view} />}
          </li>
        );
      })}
    </ol>
  );
}

/** What an event carries, in words: the number, the duration, the result and its memo. */
function EventDetail({ lang, kind, label }: { lang: Lang; kind: TimelineEntry['kind']; label: Labels }) {
  if (typeof kind === 'string') return null;
  const sep = t(lang, 'sep');
  if ('requested' in kind) return <span>{sep + kind.requested.destination}</span>;
  if ('manual-call' in kind) return <span>{sep + kind['manual-call'].number}</span>;
  if ('phone-ended' in kind) return <span>{sep + mmss(kind['phone-ended'].duration_secs)}</span>;
  if ('result-saved' in kind) {
    const saved = kind['result-saved'];
    const option = saved.option;
    const when = option.kind === 'recall' ? option.at : option.kind === 'restriction' ? option.until : undefined;
    return (
      <span>
        {' '}
        {sep + label(saved.result_type)}
        {option.kind !== 'none' && `${sep}${optionText(lang, option.kind)}${when !== undefined ? ` ${formatTime(lang, when)}` : ''}`}
        {saved.memo ? `${sep}${saved.memo}` : ''}
      </span>
    );
  }
  return null;
}

function History({ lang, detail, base, label }: { lang: Lang; detail: CustomerDetail; base: string; label: Labels }) {
  const calls = [...detail.customer.calls].reverse();
  if (calls.length === 0) return <p>{t(lang, 'noCalls')}</p>;
  return (
    <table>
      <thead>
        <tr>
          <th scope="col">{t(lang, 'call')}</th>
          <th scope="col">{t(lang, 'phase')}</th>
          <th scope="col">{t(lang, 'result')}</th>
        </tr>
      </thead>
      <tbody>
        {calls.map((c) => (
          <tr key={c.call}>
            <td>
              <a href={`#/${base}/history/${encodeURIComponent(c.call)}`}>{formatTime(lang, c.origin_stamp.at)}</a>
            </td>
            <td>{phaseText(lang, c.phase)}</td>
            <td>{c.results.length > 0 ? label(c.results[c.results.length - 1]?.result_type ?? '') : '—'}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function CallDetail({
  lang,
  sync,
  detail,
  call,
  back,
  label,
}: {
  lang: Lang;
  sync: PageSync;
  detail: CustomerDetail;
  call: string;
  back: string;
  label: Labels;
}) {
  const view = detail.customer.calls.find((c) => c.call === call);
  if (!view) return <p>{t(lang, 'noCalls')}</p>;
  const result = view.results[view.results.length - 1];
  return (
    <article aria-labelledby="call-title">
      <h3 id="call-title">{t(lang, 'callDetail')}</h3>
      <dl>
        <dt>{t(lang, 'phase')}</dt>
        <dd>{phaseText(lang, view.phase)}</dd>
        {view.origin.kind === 'dialed' && (
          <>
            <dt>{t(lang, 'destination')}</dt>
            <dd>{view.origin.destination}</dd>
            <dt>{t(lang, 'origin')}</dt>
            <dd>{view.origin.origin}</dd>
          </>
        )}
        {view.started_at !== null && (
          <>
            <dt>{t(lang, 'startedAt')}</dt>
            <dd>{formatTime(lang, view.started_at)}</dd>
          </>
        )}
        {view.phone_ended && (
          <>
            <dt>{t(lang, 'duration')}</dt>
            <dd>{mmss(view.phone_ended[1])}</dd>
          </>
        )}
        <dt>{t(lang, 'result')}</dt>
        <dd>{result ? `${label(result.result_type)}${result.memo ? `${t(lang, 'sep')}${result.memo}` : ''}` : '—'}</dd>
      </dl>
      {view.flags
        .filter((f) => !f.startsWith('recording-'))
        .map((f) => (
          <p key={f}>{flagText(lang, f)}</p>
        ))}
      <Recording lang={lang} sync={sync} detail={detail} view={view} />
      <a href={`#/${back}`}>{t(lang, 'back')}</a>
    </article>
  );
}

function Recalls({ lang, sync }: { lang: Lang; sync: PageSync }) {
  const [recalls, setRecalls] = useState<RecallSummary[] | undefined>();
  const online = sync.online;
  useAskWhenOnline(sync, { method: 'recall-list' }, (result) => setRecalls(answerOf(result, 'recalls') ?? []));
  return (
    <section aria-labelledby="recalls-title">
      <h2 id="recalls-title">{t(lang, 'recalls')}</h2>
      {!recalls ? (
        <p role="status">{online ? t(lang, 'loading') : t(lang, 'offline')}</p>
      ) : recalls.length === 0 ? (
        <p>{t(lang, 'noRecalls')}</p>
      ) : (
        <table>
          <thead>
            <tr>
              <th scope="col">{t(lang, 'company')}</th>
              <th scope="col">{t(lang, 'owner')}</th>
              <th scope="col">{t(lang, 'recallAt')}</th>
            </tr>
          </thead>
          <tbody>
            {recalls.map((r) => (
              <tr key={r.id}>
                <td>
                  <a href={`#/customers/${encodeURIComponent(r.id)}`}>{r.company}</a>
                </td>
                <td>{r.owner}</td>
                <td>{formatTime(lang, r.recallAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
