//! The `rpc` requests a device makes of its tenant's hub (customer lists and
//! pages, new customers, subscriptions, devices, recalls, upload status, call
//! statistics) and their answers, each within one frame.

use callsync_core::wire::{
    self, CustomerSummary, DeviceSummary, Message, Refusal, RpcCall, RpcResult,
};
use callsync_core::{CustomerDoc, Role};

use super::{Batch, HubSession, MAX_UNPAGED_CUSTOMERS, storage_refusal};
use crate::ConnId;
use crate::storage::{HubStore, LoadedDoc, StorageError};

/// Whether an answer encodes into one frame.
pub(super) fn fits_one_frame(result: &RpcResult) -> bool {
    wire::encode_frame(&Message::Reply {
        id: 0,
        result: result.clone(),
    })
    .is_ok()
}

/// The answer to an unpaged `customer-list` given up to `max + 1` rows: all of
/// them, or `reply-too-large` past `max` rows or one frame.
pub fn unpaged_customers(rows: Vec<CustomerSummary>, max: u32) -> RpcResult {
    let too_many = rows.len() > max as usize;
    let result = RpcResult::Customers(rows);
    if too_many || !fits_one_frame(&result) {
        return RpcResult::Refused(Refusal::ReplyTooLarge { max }.body());
    }
    result
}

impl<D: LoadedDoc> HubSession<D> {
    pub(super) fn rpc<S: HubStore<Doc = D>>(
        &mut self,
        store: &mut S,
        batch: &mut Batch<'_>,
        conn: ConnId,
        call: RpcCall,
    ) -> Result<RpcResult, StorageError> {
        let Some(member) = self.conns.get(&conn).map(|c| c.member.clone()) else {
            return Ok(RpcResult::Done);
        };
        match call {
            RpcCall::RecallList => self.recalls(store, &member),
            RpcCall::UploadStatus { uploads } => Ok(self.upload_status(batch, conn, uploads)),
            RpcCall::CallStats { from, to } => {
                // The dashboard is for managers and above, whom the assignee
                // restriction (which limits the user role) never narrows.
                if !member.role.is_manager() {
                    return Ok(RpcResult::Refused(
                        Refusal::RoleRequired {
                            needed: Role::Manager,
                        }
                        .body(),
                    ));
                }
                let span = to.as_millis().saturating_sub(from.as_millis());
                if span <= 0 || span > wire::MAX_STATS_PERIOD_MS {
                    return Ok(RpcResult::Refused(
                        Refusal::BadRequest {
                            detail: format!(
                                "the period must be between 1 ms and {} days",
                                wire::MAX_STATS_PERIOD_MS / (24 * 3600 * 1000)
                            ),
                        }
                        .body(),
                    ));
                }
                let reached: Vec<_> = self
                    .catalog(store)?
                    .types()
                    .iter()
                    .filter(|t| t.reached_person)
                    .map(|t| t.id.clone())
                    .collect();
                Ok(RpcResult::CallStats(store.call_stats(
                    &self.tenant,
                    from,
                    to,
                    &reached,
                )?))
            }
            RpcCall::CustomerCreate { customer } => {
                if customer.tenant != self.tenant {
                    return Ok(RpcResult::Refused(Refusal::WrongTenant.body()));
                }
                let most = self.settings.max_customers;
                if store.customer_count(&self.tenant)? >= most {
                    return Ok(RpcResult::Refused(
                        Refusal::CustomerLimit { max: most }.body(),
                    ));
                }
                let mut doc = match CustomerDoc::create(
                    &customer,
                    self.now,
                    self.settings.server_actor.clone(),
                ) {
                    Ok(doc) => doc,
                    Err(e) => return Ok(RpcResult::Refused(Refusal::Core(e).body())),
                };
                match store.insert(&mut doc) {
                    Ok(_) => {}
                    Err(e) if e.is_failure() => return Err(e),
                    Err(e) => return Ok(RpcResult::Refused(storage_refusal(&e))),
                }
                store.subscribe(&member.device, &self.tenant, &customer.id)?;
                self.start_sync(store, batch, conn, &customer.id, false)?;
                Ok(RpcResult::Subscribed(vec![customer.id]))
            }
            RpcCall::CustomerList {
                after,
                limit,
                query,
            } => {
                let query = query.map(|q| q.trim().to_owned()).filter(|q| !q.is_empty());
                if query
                    .as_ref()
                    .is_some_and(|q| q.chars().count() > wire::MAX_CUSTOMER_QUERY_CHARS)
                {
                    return Ok(RpcResult::Refused(
                        Refusal::BadRequest {
                            detail: format!(
                                "a search of at most {} characters",
                                wire::MAX_CUSTOMER_QUERY_CHARS
                            ),
                        }
                        .body(),
                    ));
                }
                let restricted = member.role.is_limited_by_assignee_visibility()
                    && store.assignee_visibility(&self.tenant)?;
                let owner = restricted.then_some(member.user.as_str());
                // An older client asks for everything at once: read one row past
                // what it may get, so a tenant with many customers costs a bounded
                // query, not all of them, before the refusal.
                let page = limit.map_or(MAX_UNPAGED_CUSTOMERS + 1, |l| {
                    l.clamp(1, wire::MAX_CUSTOMER_PAGE)
                });
                let rows = store.customers_page(
                    &self.tenant,
                    after.as_ref(),
                    owner,
                    query.as_deref(),
                    page,
                )?;
                Ok(match limit {
                    Some(_) => RpcResult::Customers(rows),
                    None => unpaged_customers(rows, MAX_UNPAGED_CUSTOMERS),
                })
            }
            RpcCall::Subscribe { documents } => {
                if documents.len() > wire::MAX_SUBSCRIBE {
                    return Ok(RpcResult::Refused(Refusal::TooManyDocuments.body()));
                }
                let mut subscribed = Vec::new();
                for doc in documents {
                    if self.may_see(store, &member, &doc)? {
                        store.subscribe(&member.device, &self.tenant, &doc)?;
                        self.start_sync(store, batch, conn, &doc, false)?;
                        subscribed.push(doc);
                    } else {
                        batch.send(conn, Message::DocUnavailable { document_id: doc });
                    }
                }
                Ok(RpcResult::Subscribed(subscribed))
            }
            RpcCall::Devices => Ok(RpcResult::Devices(
                store
                    .devices_of(&member.user)?
                    .into_iter()
                    .map(|(id, kind)| DeviceSummary {
                        online: self.by_device.contains_key(&id),
                        id,
                        kind,
                    })
                    .collect(),
            )),
            account => Ok(RpcResult::Refused(
                Refusal::BadRequest {
                    detail: format!("{} is answered before the hub", account.method()),
                }
                .body(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use callsync_core::CustomerId;

    use super::*;

    fn rows(n: usize) -> Vec<CustomerSummary> {
        (0..n)
            .map(|i| CustomerSummary {
                id: CustomerId::new(format!("cus-{i}")).unwrap(),
                company: "A社".to_owned(),
                contact: "山田".to_owned(),
                owner: "rep@acme.example".to_owned(),
                status: "new".to_owned(),
            })
            .collect()
    }

    fn refused_code(result: &RpcResult) -> Option<&str> {
        match result {
            RpcResult::Refused(body) => Some(body.code.as_str()),
            _ => None,
        }
    }

    #[test]
    fn an_unpaged_customer_list_answers_up_to_its_cap_and_refuses_past_it() {
        match unpaged_customers(rows(3), 3) {
            RpcResult::Customers(listed) => assert_eq!(listed.len(), 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            refused_code(&unpaged_customers(rows(4), 3)),
            Some("reply-too-large")
        );
    }

    #[test]
    fn an_unpaged_customer_list_past_one_frame_is_refused() {
        let mut big = rows(2);
        big[0].company = "株".repeat(wire::MAX_FRAME_BYTES / 3 + 1);
        assert_eq!(
            refused_code(&unpaged_customers(big, MAX_UNPAGED_CUSTOMERS)),
            Some("reply-too-large")
        );
    }
}
