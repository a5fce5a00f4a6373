// The admin screens (admins and owners): members — add, role, the calling
// contract, password reset — and 担当者閲覧制限. The same requests the CLI's
// `admin` commands send; the refusals are the server's, in the manual's register.
import { useEffect, useState } from 'preact/hooks';
import { asRefusal, type PageSync } from './sync';
import { t, type Lang } from './i18n';

interface Member {
  email: string;
  role: string;
  contract: boolean;
}

const ROLES = ['user', 'manager', 'admin', 'owner'] as const;

/** Whether a role may use the admin screens. */
export function isAdmin(role: string): boolean {
  return role === 'admin' || role === 'owner';
}

export function Admin({ lang, sync }: { lang: Lang; sync: PageSync }) {
  const [members, setMembers] = useState<Member[] | undefined>();
  const [message, setMessage] = useState<{ text: string; error: boolean } | undefined>();
  const [reload, setReload] = useState(0);
  const online = sync.online;

  /** Sends a request; says what came of it (done, or the server's refusal in words). */
  const send = async (request: Record<string, unknown>, done: string) => {
    setMessage(undefined);
    try {
      const result = await sync.ask(request);
      const refused = result.refused as { message: string; messageJa: string } | undefined;
      if (refused) {
        setMessage({ text: lang === 'ja' ? refused.messageJa : refused.message, error: true });
        return false;
      }
      setMessage({ text: done, error: false });
      setReload((n) => n + 1);
      return true;
    } catch (err) {
      const refusal = asRefusal(err);
      setMessage({ text: lang === 'ja' ? refusal.messageJa : refusal.message, error: true });
      return false;
    }
  };

  useEffect(() => {
    if (!online) return;
    void sync.ask({ method: 'user-list' }).then(
      (result) => {
        const refused = result.refused as { message: string; messageJa: string } | undefined;
        if (refused) setMessage({ text: lang === 'ja' ? refused.messageJa : refused.message, error: true });
        else setMembers((result.users as Member[] | undefined) ?? []);
      },
      () => undefined,
    );
  }, [online, reload, sync, lang]);

  const [email, setEmail] = useState('');
  const [role, setRole] = useState<string>('user');
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
                      void send({ method: 'user-set-role', email: m.email, role: e.currentTarget.value }, t(lang, 'roleChanged'))
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
          <select value={role} onChange={(e) => setRole(e.currentTarget.value)}>
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
    </section>
  );
}
