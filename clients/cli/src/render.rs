//! Text for people: customers, calls and timelines, times in the tenant's zone.
//!
//! Owns: layout of the human output. JSON output is the core's own serde shapes.

use std::fmt::Write as _;

use callsync_core::{CallOrigin, CallView, Customer, EventKind, ResultOption, TimelineEntry};
use callsync_store::{CallRow, CustomerRow};

use crate::app::App;

pub(crate) fn customer_rows(rows: &[CustomerRow]) -> String {
    let mut out = String::new();
    for r in rows {
        let _ = writeln!(
            out,
            "{}  {}  {}  [{}]  {}",
            r.id, r.company, r.contact, r.status, r.owner
        );
    }
    let _ = write!(out, "{} customer(s)", rows.len());
    out
}

pub(crate) fn customer(app: &App, c: &Customer) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}  {}  ({})", c.id, c.company, c.contact);
    let _ = writeln!(out, "  status: {}", c.status);
    let _ = writeln!(out, "  owner: {}", c.owner);
    for p in &c.phones {
        let _ = writeln!(out, "  phone: {} {}", p.label, p.number);
    }
    if let Some(at) = c.recall_at {
        let _ = writeln!(out, "  recall at: {}", app.fmt_time(at));
    }
    if let Some(until) = c.restricted_until(app.now) {
        let _ = writeln!(out, "  call restriction until: {}", app.fmt_time(until));
    }
    let _ = write!(out, "  calls: {}", c.calls.len());
    for call in &c.calls {
        let _ = write!(out, "\n    {}", call_line(app, call));
    }
    if !c.anomalies.is_empty() || !c.unreadable_events.is_empty() {
        let _ = write!(
            out,
            "\n  ignored events: {}",
            c.anomalies.len() + c.unreadable_events.len()
        );
    }
    out
}

pub(crate) fn call_line(app: &App, call: &CallView) -> String {
    let mut line = format!(
        "{}  {}  {}",
        call.call,
        app.fmt_time(call.origin_stamp.at),
        call.phase.as_str()
    );
    match &call.origin {
        CallOrigin::Dialed {
            destination,
            origin,
            recording,
        } => {
            let _ = write!(
                line,
                "  {destination} via {origin}, recording {}",
                if *recording { "on" } else { "off" }
            );
        }
        CallOrigin::Manual { number } => {
            let _ = write!(line, "  manual call with {number}");
        }
    }
    if !call.flags.is_empty() {
        let flags: Vec<&str> = call.flags.iter().map(|f| f.as_str()).collect();
        let _ = write!(line, "  [{}]", flags.join(", "));
    }
    line
}

pub(crate) fn call(app: &App, call: &CallView) -> String {
    let mut out = call_line(app, call);
    let _ = write!(
        out,
        "\n  by {} on {}",
        call.origin_stamp.user, call.origin_stamp.device
    );
    if let Some(at) = call.started_at {
        let _ = write!(out, "\n  started: {}", app.fmt_time(at));
    }
    if let Some((at, secs)) = call.phone_ended {
        let _ = write!(
            out,
            "\n  ended on the phone: {} ({secs} s)",
            app.fmt_time(at)
        );
    }
    if let Some(at) = call.browser_ended_at {
        let _ = write!(out, "\n  ended in the browser: {}", app.fmt_time(at));
    }
    for (i, r) in call.results.iter().enumerate() {
        let in_force = if i + 1 == call.results.len() {
            " (in force)"
        } else {
            ""
        };
        let _ = write!(
            out,
            "\n  result{in_force}: {} {} by {} on {}",
            r.fields.result_type,
            option(app, &r.fields.option),
            r.stamp.user,
            r.stamp.device
        );
        if !r.fields.memo.is_empty() {
            let _ = write!(out, " — {}", r.fields.memo);
        }
    }
    if call.phase.result_due() {
        let _ = write!(
            out,
            "\n  a result is required once both sides have ended the call"
        );
    }
    out
}

fn option(app: &App, option: &ResultOption) -> String {
    match option {
        ResultOption::None => String::new(),
        ResultOption::Recall { at } => format!("(recall at {})", app.fmt_time(*at)),
        ResultOption::Restriction { until } => {
            format!("(call restriction until {})", app.fmt_time(*until))
        }
    }
}

pub(crate) fn call_rows(app: &App, rows: &[CallRow]) -> String {
    let mut out = String::new();
    for r in rows {
        let _ = writeln!(
            out,
            "{}  {}  {}  {}  {}",
            r.call,
            app.fmt_time(r.requested_at),
            r.customer,
            r.phase.as_str(),
            r.user
        );
    }
    let _ = write!(out, "{} call(s)", rows.len());
    out
}

pub(crate) fn timeline(app: &App, entries: &[TimelineEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        let detail = match &e.kind {
            EventKind::Requested {
                destination,
                origin,
                recording,
            } => {
                format!(
                    "{destination} via {origin}, recording {}",
                    if *recording { "on" } else { "off" }
                )
            }
            EventKind::PhoneEnded { duration_secs } => format!("{duration_secs} s"),
            EventKind::ResultSaved(f) => format!("{} {}", f.result_type, option(app, &f.option)),
            EventKind::RecordingAttached(r) => format!("{} bytes, {} ms", r.size, r.duration_ms),
            EventKind::ManualCall { number } => number.to_string(),
            _ => String::new(),
        };
        let detail = match e.ignored {
            Some(reason) => format!("{detail} [ignored: {}]", reason.as_str()),
            None => detail,
        };
        let _ = writeln!(
            out,
            "{}  {}  {:<18} {} ({})  {}",
            app.fmt_time(e.stamp.at),
            e.call,
            e.kind.name(),
            e.stamp.device,
            e.stamp.user,
            detail
        );
    }
    let _ = write!(out, "{} event(s)", entries.len());
    out
}
