//! `callsync demo`: builds a data directory from the fixtures and walks one call
//! end to end through the same code paths as the commands, printing each step.

use std::path::Path;

use anyhow::bail;
use callsync_core::{CustomerId, DeviceKind, EventKind, Timestamp};

use crate::app::{App, DB_FILE};
use crate::args::{Global, ResultArgs};
use crate::import::read_customers;
use crate::render;

/// Prints a line; a reader that went away (`… | head`) ends nothing.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// The fixture customers, built into the binary so the demo runs from anywhere.
const FIXTURE_CSV: &str = include_str!("../../../fixtures/customers.csv");

pub(crate) fn run(global: &Global, data: &Path) -> anyhow::Result<()> {
    if data.join(DB_FILE).exists() {
        bail!(
            "{} already holds a database; the demo builds a fresh one (pass --data with a new directory)",
            data.display()
        );
    }
    let mut app = App::open(global, data)?;
    let step = |n: u32, text: &str| say!("\n== {n}. {text}");

    step(1, "Import the fixture customers");
    let csv_path = data.join("customers.csv");
    std::fs::write(&csv_path, FIXTURE_CSV)?;
    let customers = read_customers(&csv_path, &app.tenant, app.now)?;
    app.create_customers(&customers)?;
    say!(
        "imported {} customers into {}",
        customers.len(),
        data.display()
    );

    let customer_id = CustomerId::new("cus-0001")?;
    let customer = app.load(&customer_id)?.customer()?;
    let number = customer
        .phones
        .first()
        .map(|p| p.number.to_string())
        .unwrap_or_default();
    step(2, "Open the customer (a new customer is 未対応)");
    say!("{}", render::customer(&app, &customer));

    step(
        3,
        &format!("Desk: call {number} from {} with recording on", app.phone),
    );
    let call = app.request(customer_id.as_str(), &number, None, true)?;
    say!(
        "{}\nthe browser shows: press Start call in the mobile app",
        render::call_line(&app, &call)
    );
    let call_id = call.call.to_string();

    app.now = app.now.plus_millis(8_000);
    step(
        4,
        "Phone: Start call (8 s later, within the 1-minute limit)",
    );
    let view = app.act_on_call(&call_id, DeviceKind::Phone, EventKind::Started)?;
    say!("{}", render::call_line(&app, &view));

    app.now = app.now.plus_millis(95_000);
    step(5, "Phone: end the call after 95 s");
    let view = app.act_on_call(
        &call_id,
        DeviceKind::Phone,
        EventKind::PhoneEnded { duration_secs: 95 },
    )?;
    say!("{}", render::call_line(&app, &view));

    app.now = app.now.plus_millis(4_000);
    step(6, "Desk: press the red end button");
    let view = app.act_on_call(&call_id, DeviceKind::Desk, EventKind::BrowserEnded)?;
    say!("{}", render::call_line(&app, &view));

    step(
        7,
        "Desk: try to call another customer before saving the result (refused)",
    );
    match app.request("cus-0002", "022-212-4471", None, true) {
        Ok(_) => bail!("the core accepted a request while a result was pending"),
        Err(e) => match crate::app::core_error(&e) {
            Some(core) => say!("refused: {core}\n         {}", core.message_ja()),
            None => return Err(e),
        },
    }

    app.now = app.now.plus_millis(40_000);
    let recall = next_step_after(app.now, 24 * 3600 * 1000);
    step(
        8,
        "Desk: save the result — 不在 (no answer), recall tomorrow",
    );
    let args = ResultArgs {
        result_type: "no-answer".into(),
        recall: Some(app.fmt_time(recall).chars().take(16).collect()),
        restrict_until: None,
        status: None,
        memo: "受付で担当者不在、明日同時刻に再コール".into(),
    };
    let view = app.save_result(&call_id, &args)?;
    say!("{}", render::call(&app, &view));

    step(9, "The customer now (対応済み, with the recall in force)");
    say!(
        "{}",
        render::customer(&app, &app.load(&customer_id)?.customer()?)
    );

    step(10, "The customer's timeline");
    say!(
        "{}",
        render::timeline(&app, &app.load(&customer_id)?.timeline())
    );
    say!(
        "\ndata directory: {}  (try: callsync --data {} customer list)",
        data.display(),
        data.display()
    );
    Ok(())
}

/// The first 5-minute step at least `ms` after `now`.
fn next_step_after(now: Timestamp, ms: i64) -> Timestamp {
    now.plus_millis(ms).ceil_to_option_step()
}
