// The call-performance dashboard (コール実績): calls and 本人通話率 per user and
// for the tenant over a chosen period. The figures come from the server (the
// page does not hold every customer); Chart.js draws them, and a table says the
// same for screen readers and keyboards.
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Chart } from 'chart.js';
import { asRefusal, type PageSync } from './sync';
import { t, type Lang } from './i18n';
import { answerOf, refusalOf, type UserCallStats } from './types';

let chartModule: Promise<typeof Chart> | undefined;
/** Chart.js, loaded the first time a dashboard draws: only managers open it. */
function loadChart(): Promise<typeof Chart> {
  chartModule ??= import('./chart').then((m) => m.Chart);
  return chartModule;
}

/** Whether a role may see the dashboard (manager and above). */
export function isManager(role: string): boolean {
  return role === 'manager' || role === 'admin' || role === 'owner';
}

/** Today in Japan, as YYYY-MM-DD. */
function tokyoDate(ms: number): string {
  return new Intl.DateTimeFormat('sv-SE', { timeZone: 'Asia/Tokyo' }).format(new Date(ms));
}

/** Midnight in Japan at the start of `date` (YYYY-MM-DD), as UTC milliseconds. */
function tokyoMidnight(date: string): number {
  return Date.parse(`${date}T00:00:00+09:00`);
}

function rate(reached: number, results: number): number {
  return results === 0 ? 0 : Math.round((reached / results) * 1000) / 10;
}

export function Dashboard({ lang, sync }: { lang: Lang; sync: PageSync }) {
  const today = tokyoDate(Date.now());
  const [from, setFrom] = useState(`${today.slice(0, 8)}01`);
  const [to, setTo] = useState(today);
  const [stats, setStats] = useState<UserCallStats[] | undefined>();
  const [error, setError] = useState<string | undefined>();
  const canvas = useRef<HTMLCanvasElement>(null);
  const chart = useRef<Chart | undefined>(undefined);

  const load = async () => {
    setError(undefined);
    try {
      // The period runs to the end of the `to` day.
      const result = await sync.ask({ method: 'call-stats', from: tokyoMidnight(from), to: tokyoMidnight(to) + 24 * 3600 * 1000 });
      const refusal = refusalOf(result);
      if (refusal) {
        setError(lang === 'ja' ? refusal.messageJa : refusal.message);
        return;
      }
      setStats(answerOf(result, 'call-stats') ?? []);
    } catch (err) {
      const refusal = asRefusal(err);
      setError(lang === 'ja' ? refusal.messageJa : refusal.message);
    }
  };
  const online = sync.online;
  useEffect(() => {
    if (online) void load();
    // Loaded again on demand (the Show button) or when the connection returns.
  }, [online]);

  useEffect(() => {
    if (!stats) return undefined;
    let live = true;
    void loadChart().then((ChartClass) => {
      if (!live || !canvas.current) return;
      chart.current?.destroy();
      chart.current = new ChartClass(canvas.current, {
        data: {
          labels: stats.map((s) => s.user),
          datasets: [
            { type: 'bar', label: t(lang, 'calls'), data: stats.map((s) => s.calls), backgroundColor: '#0b5cad', yAxisID: 'calls' },
            {
              type: 'line',
              label: `${t(lang, 'reachedRate')} (%)`,
              data: stats.map((s) => rate(s.reached, s.results)),
              borderColor: '#b35900',
              backgroundColor: '#b35900',
              yAxisID: 'rate',
            },
          ],
        },
        options: {
          animation: false,
          responsive: true,
          aspectRatio: 3,
          scales: {
            calls: { type: 'linear', position: 'left', beginAtZero: true, ticks: { precision: 0 } },
            rate: { type: 'linear', position: 'right', min: 0, max: 100, grid: { drawOnChartArea: false } },
          },
        },
      });
    });
    return () => {
      live = false;
      chart.current?.destroy();
      chart.current = undefined;
    };
  }, [stats, lang]);

  const total = stats?.reduce(
    (sum, s) => ({ user: t(lang, 'total'), calls: sum.calls + s.calls, results: sum.results + s.results, reached: sum.reached + s.reached }),
    { user: t(lang, 'total'), calls: 0, results: 0, reached: 0 },
  );
  return (
    <section aria-labelledby="dashboard-title">
      <h2 id="dashboard-title">{t(lang, 'dashboard')}</h2>
      <form
        class="period"
        onSubmit={(e) => {
          e.preventDefault();
          void load();
        }}
      >
        <label class="inline">
          {t(lang, 'from')}
          <input type="date" value={from} required onInput={(e) => setFrom(e.currentTarget.value)} />
        </label>
        <label class="inline">
          {t(lang, 'to')}
          <input type="date" value={to} required onInput={(e) => setTo(e.currentTarget.value)} />
        </label>
        <button type="submit" class="primary" disabled={!online}>
          {t(lang, 'show')}
        </button>
      </form>
      {error && (
        <p class="alert" role="alert">
          {error}
        </p>
      )}
      {!online && !stats && <p role="status">{t(lang, 'offline')}</p>}
      {stats && total && (
        <>
          <canvas ref={canvas} role="img" aria-label={`${t(lang, 'calls')} / ${t(lang, 'reachedRate')}`} data-testid="chart" />
          <table data-testid="stats">
            <thead>
              <tr>
                <th scope="col">{t(lang, 'user')}</th>
                <th scope="col">{t(lang, 'calls')}</th>
                <th scope="col">{t(lang, 'reachedRate')}</th>
              </tr>
            </thead>
            <tbody>
              {stats.map((s) => (
                <tr key={s.user}>
                  <th scope="row">{s.user}</th>
                  <td>{s.calls}</td>
                  <td>{rate(s.reached, s.results)}%</td>
                </tr>
              ))}
            </tbody>
            <tfoot>
              <tr>
                <th scope="row">{total.user}</th>
                <td>{total.calls}</td>
                <td>{rate(total.reached, total.results)}%</td>
              </tr>
            </tfoot>
          </table>
        </>
      )}
    </section>
  );
}
