//! Reading customers from a CSV file: `id,company,contact,owner,phones`, where
//! `phones` is `LABEL:NUMBER` entries separated by `;`.
//!
//! Owns: the file format and its row-by-row checks. Every row is checked before
//! anything is written, so one bad row imports nothing.

use std::path::Path;

use callsync_core::{ActorId, CustomerDoc, CustomerId, NewCustomer, TenantId, Timestamp, UserId};

use crate::app::parse_phone_entry;

/// The header the file must start with.
pub(crate) const HEADER: [&str; 5] = ["id", "company", "contact", "owner", "phones"];

/// Why a file could not be imported.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    /// The file could not be read.
    #[error("cannot read {file}: {reason}")]
    Unreadable { file: String, reason: String },
    /// The first line is not the expected header.
    #[error("{file}: the header must be {expected}, found {found}")]
    BadHeader {
        file: String,
        expected: String,
        found: String,
    },
    /// Some rows are bad; nothing was imported.
    #[error("{file}: {} bad row(s), nothing imported; line {}: {}", rows.len(), rows[0].0, rows[0].1)]
    BadRows {
        file: String,
        rows: Vec<(u64, String)>,
    },
}

/// Reads and checks every row. Returns the customers in file order.
pub(crate) fn read_customers(
    path: &Path,
    tenant: &TenantId,
    now: Timestamp,
) -> Result<Vec<NewCustomer>, ImportError> {
    let file = path.display().to_string();
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| ImportError::Unreadable {
            file: file.clone(),
            reason: e.to_string(),
        })?;
    let header = reader.headers().map_err(|e| ImportError::Unreadable {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    if header.iter().collect::<Vec<_>>() != HEADER {
        return Err(ImportError::BadHeader {
            file,
            expected: HEADER.join(","),
            found: header.iter().collect::<Vec<_>>().join(","),
        });
    }
    let mut customers = Vec::new();
    let mut bad = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                bad.push((line, e.to_string()));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        match row(&record, tenant, now) {
            Ok(customer) if !seen.insert(customer.id.clone()) => {
                bad.push((line, format!("customer id {} appears twice", customer.id)));
            }
            Ok(customer) => customers.push(customer),
            Err(reason) => bad.push((line, reason)),
        }
    }
    if bad.is_empty() {
        Ok(customers)
    } else {
        Err(ImportError::BadRows { file, rows: bad })
    }
}

fn row(
    record: &csv::StringRecord,
    tenant: &TenantId,
    now: Timestamp,
) -> Result<NewCustomer, String> {
    if record.len() != HEADER.len() {
        return Err(format!(
            "expected {} fields, found {}",
            HEADER.len(),
            record.len()
        ));
    }
    let field = |i: usize| record.get(i).unwrap_or_default();
    let phones = field(4)
        .split(';')
        .filter(|p| !p.trim().is_empty())
        .map(parse_phone_entry)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("phones: {e}"))?;
    let customer = NewCustomer {
        tenant: tenant.clone(),
        id: CustomerId::new(field(0)).map_err(|e| e.to_string())?,
        company: field(1).to_owned(),
        contact: field(2).to_owned(),
        owner: UserId::new(field(3)).map_err(|e| format!("owner: {e}"))?,
        phones,
    };
    // The core's own checks (empty names, limits) run on a throwaway document.
    CustomerDoc::create(&customer, now, ActorId::from(b"import-check".as_slice()))
        .map_err(|e| e.to_string())?;
    Ok(customer)
}
