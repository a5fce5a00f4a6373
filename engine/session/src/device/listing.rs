//! The customer list, a page at a time, searched on the server.
//!
//! Owns: the page size, the cursor (the last id shown), whether more remains,
//! and the search text of the list a screen shows; the answers fill it as they
//! come. Does not own: the list kept for offline use (the host keeps what it
//! saw and what it holds), or drawing it.

use callsync_core::Timestamp;
use callsync_core::wire::{self, CustomerSummary, RpcCall, RpcResult};
use serde::Serialize;

use super::{DeviceFailure, DeviceSession};
use crate::storage::LoadedDoc;

/// Customers asked for at a time (a screenful and more; the server allows up to
/// [`wire::MAX_CUSTOMER_PAGE`]).
pub const CUSTOMER_PAGE: u32 = 100;

/// The customer list a screen shows.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerListing {
    /// The search, if any.
    pub query: Option<String>,
    /// The customers so far, in id order.
    pub rows: Vec<CustomerSummary>,
    /// Every customer that matches is in `rows`.
    pub complete: bool,
    /// A page is on its way.
    pub loading: bool,
    /// The ticket of the page on its way.
    #[serde(skip)]
    ticket: Option<u64>,
}

impl<D: LoadedDoc> DeviceSession<D> {
    /// Starts the list over, with `query` (none: every customer): asks the first
    /// page (sent at the next join when offline). Returns its ticket.
    pub fn list_customers(
        &mut self,
        now: Timestamp,
        query: Option<String>,
    ) -> Result<u64, DeviceFailure> {
        let query = query
            .map(|q| {
                q.trim()
                    .chars()
                    .take(wire::MAX_CUSTOMER_QUERY_CHARS)
                    .collect::<String>()
            })
            .filter(|q| !q.is_empty());
        self.listing = CustomerListing {
            query: query.clone(),
            ..CustomerListing::default()
        };
        self.ask_page(now, None)
    }

    /// Asks the next page, unless every customer is shown or a page is on its
    /// way. Returns its ticket.
    pub fn more_customers(&mut self, now: Timestamp) -> Result<Option<u64>, DeviceFailure> {
        if self.listing.complete || self.listing.loading {
            return Ok(None);
        }
        let after = self.listing.rows.last().map(|r| r.id.clone());
        self.ask_page(now, after).map(Some)
    }

    /// The list as it stands.
    pub fn customer_listing(&self) -> &CustomerListing {
        &self.listing
    }

    fn ask_page(
        &mut self,
        now: Timestamp,
        after: Option<callsync_core::CustomerId>,
    ) -> Result<u64, DeviceFailure> {
        let call = RpcCall::CustomerList {
            after,
            limit: Some(CUSTOMER_PAGE),
            query: self.listing.query.clone(),
        };
        let ticket = self.ask(now, call)?;
        self.listing.ticket = Some(ticket);
        self.listing.loading = true;
        Ok(ticket)
    }

    /// An answer (or `None`: no answer) for ask `ticket`: fills the list if it
    /// was its page.
    pub(super) fn listing_answered(&mut self, ticket: u64, result: Option<&RpcResult>) {
        if self.listing.ticket != Some(ticket) {
            return;
        }
        self.listing.ticket = None;
        self.listing.loading = false;
        if let Some(RpcResult::Customers(rows)) = result {
            self.listing.complete = rows.len() < CUSTOMER_PAGE as usize;
            self.listing.rows.extend(rows.iter().cloned());
        }
    }
}
