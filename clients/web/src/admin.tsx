// The admin screens (admins and owners): members — add, role, the calling
// contract, password reset —, 担当者閲覧制限 and the result-rule plugins
// (install from a file, the one in use, roll back). The same requests the CLI's
// `admin` commands send (the engine builds the plugin ones, as it does the
// CLI's); the refusals are the server's, in the manual's register.
import { useEffect, useMemo, useState } from 'preact/hooks';
import { asRefusal, type PageSync } from './sync';
import { formatTime, t, type Lang } from './i18n';
import { answerOf, refusalOf, type MemberSummary, type PluginListing, type ResultTypeSpec, type Role, type RpcCall, type RpcResult } from './types';

const ROLES = ['user', 'manager', 'admin', 'owner'] as const;

/** Whether a role may use the admin screens. */
export function isAdmin(role: string): boolean {
  return role === 'admin' || role === 'owner';
}

export function Admin({ lang, sync }: { lang: Lang; sync: PageSync }) {
  const [members, setMembers] = useState<MemberSummary[] | undefined>();
  const [message, setMessage] = useState<{ text: string; error: boolean } | undefined>();
  const [reload, setReload] = useState(0);
  const online = sync.online;

  /**
   * Runs a request (`ask` sends it); says what came of it: `done` (or what it
   * makes of the answer), or the server's refusal in words.
   */
  const run = async (ask: () => Promise<RpcResult>, done: string | ((result: RpcResult) => string)) => {
    setMessage(undefined);
    try {
      const result = await ask();
      const refused = refusalOf(result);
      if (refused) {
        setMessage({ text: lang === 'ja' ? refused.messageJa : refused.message, error: true });
        return false;
      }
      setMessage({ text: typeof done === 'string' ? done : done(result), error: false });
      setReload((n) => n + 1);
      return true;
    } catch (err) {
      const refusal = asRefusal(err);
      setMessage({ text: lang === 'ja' ? refusal.messageJa : refusal.message, error: true });
      return false;
    }
  };
  const send = (request: RpcCall, done: string) => run(() => sync.ask(request), done);

  useEffect(() => {
    if (!online) return;
    void sync.ask({ method: 'user-list' }).then(
      (result) => {
        const refused = refusalOf(result);
        if (refused) setMessage({ text: lang === 'ja' ? refused.messageJa : refused.message, error: true });
        else setMembers(answerOf(result, 'users') ?? []);
      },
      () => undefined,
    );
  }, [online, reload, sync, lang]);

  const [email, setEmail] = useState('');
  const [role, setRole] = useState<Role>('user');
  const [password, setPassword] = useState('');
  const [contract, setContract] = useState(true);
  const [resets, setResets] = useState<Record<string, string>>({});

  if (!online) return <p role="status">{t(lang, 'adminOffline')}</p>;
  return (
    <section aria-labelledby="admin-title">
      <h2 id="admin-title">{t(lang, 'admin')}</h2>
      {message && (
        <p class={message.error ? 'alert' : 'notice'} role={message.error ? 'alert' : 'status'}>
          {message.text}
        </p>
      )}
      <h3>{t(lang, 'members')}</h3>
      {!members ? (
        <p role="status">{t(lang, 'loading')}</p>
      ) : (
        <table data-testid="members">
          <thead>
            <tr>
              <th scope="col">{t(lang, 'email')}</th>
              <th scope="col">{t(lang, 'role')}</th>
              <th scope="col">{t(lang, 'contract')}</th>
              <th scope="col">{t(lang, 'password')}</th>
            </tr>
          </thead>
          <tbody>
            {members.map((m) => (
              <tr key={m.email}>
                <th scope="row">{m.email}</th>
                <td>
                  <select
                    aria-label={`${t(lang, 'role')}: ${m.email}`}
                    value={m.role}
                    onChange={(e) =>
                      void send({ method: 'user-set-role', email: m.email, role: e.currentTarget.value as Role }, t(lang, 'roleChanged'))
                    }
                  >
                    {ROLES.map((r) => (
                      <option key={r} value={r}>
                        {t(lang, `role_${r}`)}
                      </option>
                    ))}
                  </select>
                </td>
                <td>
                  <button
                    type="button"
                    onClick={() =>
                      void send(
                        { method: 'user-set-contract', email: m.email, contract: !m.contract },
                        t(lang, m.contract ? 'contractRevoked' : 'contractGranted'),
                      )
                    }
                  >
                    {m.contract ? t(lang, 'revokeContract') : t(lang, 'grantContract')}
                  </button>{' '}
                  <span>{m.contract ? t(lang, 'hasContract') : t(lang, 'noContract')}</span>
                </td>
                <td>
                  <input
                    type="password"
                    autocomplete="new-password"
                    aria-label={`${t(lang, 'newPassword')}: ${m.email}`}
                    value={resets[m.email] ?? ''}
                    onInput={(e) => {
                      const value = e.currentTarget.value;
                      setResets((r) => ({ ...r, [m.email]: value }));
                    }}
                  />{' '}
                  <button
                    type="button"
                    disabled={!resets[m.email]}
                    onClick={() =>
                      void send({ method: 'user-reset-password', email: m.email, password: resets[m.email] ?? '' }, t(lang, 'passwordReset')).then(
                        (ok) => ok && setResets((r) => ({ ...r, [m.email]: '' })),
                      )
                    }
                  >
                    {t(lang, 'resetPassword')}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <form
        class="admin-add"
        onSubmit={(e) => {
          e.preventDefault();
          void send({ method: 'user-add', email: email.trim(), role, password, contract }, t(lang, 'memberAdded')).then((ok) => {
            if (ok) {
              setEmail('');
              setPassword('');
            }
          });
        }}
      >
        <h3>{t(lang, 'addMember')}</h3>
        <label>
          {t(lang, 'email')}
          <input type="email" required value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
        </label>
        <label>
          {t(lang, 'role')}
          <select value={role} onChange={(e) => setRole(e.currentTarget.value as Role)}>
            {ROLES.map((r) => (
              <option key={r} value={r}>
                {t(lang, `role_${r}`)}
              </option>
            ))}
          </select>
        </label>
        <label>
          {t(lang, 'password')}
          <input type="password" autocomplete="new-password" required value={password} onInput={(e) => setPassword(e.currentTarget.value)} />
        </label>
        <label class="inline">
          <input type="checkbox" checked={contract} onChange={(e) => setContract(e.currentTarget.checked)} />
          {t(lang, 'grantContract')}
        </label>
        <button type="submit" class="primary">
          {t(lang, 'addMember')}
        </button>
      </form>
      <h3>{t(lang, 'visibility')}</h3>
      <p>{t(lang, 'visibilityHelp')}</p>
      <button type="button" onClick={() => void send({ method: 'set-assignee-visibility', restricted: true }, t(lang, 'visibilityOn'))}>
        {t(lang, 'turnOn')}
      </button>{' '}
      <button type="button" onClick={() => void send({ method: 'set-assignee-visibility', restricted: false }, t(lang, 'visibilityOff'))}>
        {t(lang, 'turnOff')}
      </button>
      <Plugins lang={lang} sync={sync} run={run} />
    </section>
  );
}

type Run = (ask: () => Promise<RpcResult>, done: string | ((result: RpcResult) => string)) => Promise<boolean>;

/** The result-rule plugins: the rule sets this page holds (synced from the server), install, roll back. */
function Plugins({ lang, sync, run }: { lang: Lang; sync: PageSync; run: Run }) {
  // Read again when the configuration document may have changed (an install
  // shows once it has synced): reading it loads every stored plugin, so not on
  // every keystroke or unrelated event.
  const [version, setVersion] = useState(0);
  useEffect(
    () =>
      sync.subscribe((events) => {
        if (events.some((e) => e.event === 'config-changed' || e.event === 'joined' || e.event === 'reply')) setVersion((n) => n + 1);
      }),
    [sync],
  );
  const listing = useMemo(() => JSON.parse(sync.device.plugins()) as PluginListing, [sync, version]);
  const [file, setFile] = useState<File | undefined>();
  const [settings, setSettings] = useState('');
  const [timeZone, setTimeZone] = useState('Asia/Tokyo');
  const [holidays, setHolidays] = useState<File | undefined>();
  const [busy, setBusy] = useState(false);
  const label = (spec: ResultTypeSpec) => (lang === 'ja' ? spec.label_ja : spec.label_en);

  /** The verdict of an install that passed the server's checks, in words. */
  const installed = (result: RpcResult) => {
    const summary = answerOf(result, 'plugin-installed');
    if (!summary) return t(lang, 'pluginInstalled');
    return `${t(lang, 'pluginInstalled')}: ${summary.plugin.id}@${summary.plugin.version}${t(lang, 'sep')}${t(lang, 'pluginTypes')}: ${summary.resultTypes.length}`;
  };

  return (
    <>
      <h3>{t(lang, 'plugins')}</h3>
      {listing.rulesets.length === 0 ? (
        <p>{t(lang, 'pluginsNone')}</p>
      ) : (
        <table data-testid="plugins">
          <thead>
            <tr>
              <th scope="col">{t(lang, 'pluginVersion')}</th>
              <th scope="col">{t(lang, 'pluginTypes')}</th>
              <th scope="col">{t(lang, 'pluginInstalledAt')}</th>
              <th scope="col">{t(lang, 'pluginRuleset')}</th>
            </tr>
          </thead>
          <tbody>
            {listing.rulesets.map((r) => (
              <tr key={r.id} data-active={r.active ? 'true' : 'false'}>
                <th scope="row">
                  {r.plugin.id}@{r.plugin.version}
                </th>
                <td>{r.resultTypes.map(label).join('、')}</td>
                <td>{r.installedAt !== null ? `${formatTime(lang, r.installedAt)} ${r.installedBy ?? ''}` : ''}</td>
                <td>
                  <code title={r.id}>{r.id.slice(0, 12)}</code>{' '}
                  {r.active ? (
                    <strong>{t(lang, 'pluginActive')}</strong>
                  ) : (
                    <button
                      type="button"
                      disabled={busy}
                      onClick={() => {
                        setBusy(true);
                        void run(() => sync.rollBackPlugin(r.id), t(lang, 'pluginRolledBack')).finally(() => setBusy(false));
                      }}
                    >
                      {t(lang, 'pluginRollBack')}
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <form
        class="admin-add"
        onSubmit={(e) => {
          e.preventDefault();
          if (!file) return;
          setBusy(true);
          // The files are read inside the request, so a file gone since it was
          // picked is said like any other failure.
          void run(
            async () => sync.installPlugin(new Uint8Array(await file.arrayBuffer()), settings, holidays ? await holidays.text() : undefined, timeZone),
            installed,
          ).finally(() => setBusy(false));
        }}
      >
        <h4>{t(lang, 'pluginInstall')}</h4>
        <label>
          {t(lang, 'pluginFile')}
          <input type="file" accept=".wasm,application/wasm" required onChange={(e) => setFile(e.currentTarget.files?.[0])} />
        </label>
        <label>
          {t(lang, 'pluginSettings')}
          <textarea rows={3} value={settings} onInput={(e) => setSettings(e.currentTarget.value)} />
        </label>
        <label>
          {t(lang, 'pluginTimeZone')}
          <input value={timeZone} onInput={(e) => setTimeZone(e.currentTarget.value)} />
        </label>
        <label>
          {t(lang, 'pluginHolidays')}
          <input type="file" accept=".csv,text/csv,text/plain" onChange={(e) => setHolidays(e.currentTarget.files?.[0])} />
        </label>
        <button type="submit" class="primary" disabled={busy || !file}>
          {t(lang, 'pluginInstall')}
        </button>
      </form>
    </>
  );
}
