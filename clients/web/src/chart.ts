// Chart.js with only what the dashboard draws (bars and a line), registered
// once. Its own chunk: the dashboard imports it the first time it draws, so
// the rep's pages never load it.
import { BarController, BarElement, CategoryScale, Chart, Legend, LineController, LineElement, LinearScale, PointElement, Tooltip } from 'chart.js';

Chart.register(BarController, BarElement, CategoryScale, Legend, LineController, LineElement, LinearScale, PointElement, Tooltip);

export { Chart };
