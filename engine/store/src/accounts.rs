//! The server's accounts: tenants, members, devices, actor bindings and sessions.
//!
//! Owns: the rows, and the rules that keep them consistent (an email belongs to one
//! tenant; a device to one member; an actor to one device; ending a member's
//! sessions when their password or contract changes). Every change is one
//! transaction.
//! Does not own: hashing (the server hashes passwords with Argon2id and tokens with
//! SHA-256 before they reach this module; nothing here ever sees a secret) or
//! deciding who may ask for a change (the server checks roles).

use callsync_core::{DeviceId, DeviceKind, Role, TenantId, Timestamp, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{Read, Store, StoreError};

/// Sessions one member may hold at once (one per device, with room to spare);
/// logging in past it ends the member's oldest session.
pub const MAX_SESSIONS_PER_MEMBER: usize = 16;

/// One member of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The tenant.
    pub tenant: TenantId,
    /// Email (the user id).
    pub email: UserId,
    /// The Argon2id hash in PHC string form.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// Whether they hold the calling contract.
    pub contract: bool,
}

/// One registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device.
    pub id: DeviceId,
    /// Its tenant.
    pub tenant: TenantId,
    /// The member it belongs to.
    pub email: UserId,
    /// Desk or phone.
    pub kind: DeviceKind,
}

/// What [`Store::open_session`] registers.
#[derive(Debug, Clone, Copy)]
pub struct NewSession<'a> {
    /// The device.
    pub device: &'a DeviceId,
    /// Desk or phone.
    pub kind: DeviceKind,
    /// The Automerge actor (hex) the device writes under.
    pub actor: &'a str,
    /// SHA-256 of the token.
    pub token_hash: &'a [u8],
    /// When the token stops working.
    pub expires_at: Timestamp,
}

/// A live session, found by its token's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The device.
    pub device: DeviceRecord,
    /// The member, as they are now (role and contract included).
    pub member: MemberRecord,
    /// When the token stops working.
    pub expires_at: Timestamp,
}

fn bad_row(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn kind_of(name: &str) -> Result<DeviceKind, StoreError> {
    match name {
        "desk" => Ok(DeviceKind::Desk),
        "phone" => Ok(DeviceKind::Phone),
        "server" => Ok(DeviceKind::Server),
        _ => Err(bad_row("device kind")),
    }
}

fn member_from(
    tenant: String,
    email: String,
    hash: String,
    role: String,
    contract: bool,
) -> Result<MemberRecord, StoreError> {
    Ok(MemberRecord {
        tenant: TenantId::new(tenant).map_err(|_| bad_row("tenant id"))?,
        email: UserId::new(email).map_err(|_| bad_row("email"))?,
        password_hash: hash,
        role: Role::parse(&role).ok_or_else(|| bad_row("role"))?,
        contract,
    })
}

fn member(conn: &Connection, email: &UserId) -> Result<Option<MemberRecord>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT tenant_id, email, password_hash, role, contract FROM members WHERE email = ?1",
        )?
        .query_row(params![email.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, bool>(4)?,
            ))
        })
        .optional()?;
    row.map(|(t, e, h, r, c)| member_from(t, e, h, r, c))
        .transpose()
}

fn device_row(conn: &Connection, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
    let row = conn
        .prepare_cached("SELECT tenant_id, email, kind FROM devices WHERE device_id = ?1")?
        .query_row(params![id.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .optional()?;
    row.map(|(t, e, k)| {
        Ok(DeviceRecord {
            id: id.clone(),
            tenant: TenantId::new(t).map_err(|_| bad_row("tenant id"))?,
            email: UserId::new(e).map_err(|_| bad_row("email"))?,
            kind: kind_of(&k)?,
        })
    })
    .transpose()
}

impl Store {
    /// Creates a tenant and its owner in one transaction. Refuses if the tenant or
    /// the email exists.
    pub fn create_tenant(
        &mut self,
        owner: &MemberRecord,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let tx = self.write()?;
        let exists: bool = tx
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = ?1)")?
            .query_row(params![owner.tenant.as_str()], |r| r.get(0))?;
        if exists {
            return Err(StoreError::TenantExists {
                tenant: owner.tenant.clone(),
            });
        }
        tx.conn
            .prepare_cached("INSERT INTO tenants (tenant_id, created_at) VALUES (?1, ?2)")?
            .execute(params![owner.tenant.as_str(), now.as_millis()])?;
        insert_member(tx.conn, owner, now)?;
        tx.commit()
    }

    /// Whether any tenant exists (a fresh server has none until `--init-owner`).
    pub fn has_tenants(&self) -> Result<bool, StoreError> {
        Ok(self
            .db()
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM tenants)")?
            .query_row([], |r| r.get(0))?)
    }

    /// Every tenant, by id.
    pub fn tenant_ids(&self) -> Result<Vec<TenantId>, StoreError> {
        let mut stmt = self
            .db()
            .prepare_cached("SELECT tenant_id FROM tenants ORDER BY tenant_id")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        ids.into_iter()
            .map(|id| TenantId::new(id).map_err(|_| bad_row("tenant id")))
            .collect()
    }

    /// Turns the assignee visibility restriction on or off.
    pub fn set_assignee_visibility(
        &mut self,
        tenant: &TenantId,
        restricted: bool,
    ) -> Result<(), StoreError> {
        let n = self
            .conn
            .prepare_cached("UPDATE tenants SET assignee_visibility = ?2 WHERE tenant_id = ?1")?
            .execute(params![tenant.as_str(), restricted])?;
        if n == 0 {
            return Err(StoreError::UnknownTenant {
                tenant: tenant.clone(),
            });
        }
        Ok(())
    }

    /// Adds a member to an existing tenant.
    pub fn add_member(&mut self, new: &MemberRecord, now: Timestamp) -> Result<(), StoreError> {
        let tx = self.write()?;
        insert_member(tx.conn, new, now)?;
        tx.commit()
    }

    /// The member signing in with `email`, in any tenant.
    pub fn member(&self, email: &UserId) -> Result<Option<MemberRecord>, StoreError> {
        member(&self.conn, email)
    }

    /// The tenant's members, by email.
    pub fn members(&self, tenant: &TenantId) -> Result<Vec<MemberRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT tenant_id, email, password_hash, role, contract FROM members
             WHERE tenant_id = ?1 ORDER BY email",
        )?;
        let rows = stmt.query_map(params![tenant.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (t, e, h, r, c) = row?;
            out.push(member_from(t, e, h, r, c)?);
        }
        Ok(out)
    }

    /// Grants or revokes the calling contract. Revoking ends the member's sessions.
    pub fn set_contract(
        &mut self,
        tenant: &TenantId,
        email: &UserId,
        contract: bool,
    ) -> Result<(), StoreError> {
        let tx = self.write()?;
        update_member(tx.conn, tenant, email, "contract", &contract)?;
        if !contract {
            end_sessions(tx.conn, email)?;
        }
        tx.commit()
    }

    /// Gives a member another role; refused if it would leave the tenant with
    /// no owner.
    pub fn set_role(
        &mut self,
        tenant: &TenantId,
        email: &UserId,
        role: Role,
    ) -> Result<(), StoreError> {
        let tx = self.write()?;
        update_member(tx.conn, tenant, email, "role", &role.as_str())?;
        let owners: i64 = tx.conn.query_row(
            "SELECT count(*) FROM members WHERE tenant_id = ?1 AND role = ?2",
            params![tenant.as_str(), Role::Owner.as_str()],
            |r| r.get(0),
        )?;
        if owners == 0 {
            return Err(StoreError::LastOwner);
        }
        tx.commit()
    }

    /// Replaces a member's password hash and ends their sessions.
    pub fn set_password_hash(
        &mut self,
        tenant: &TenantId,
        email: &UserId,
        hash: &str,
    ) -> Result<(), StoreError> {
        let tx = self.write()?;
        update_member(tx.conn, tenant, email, "password_hash", &hash)?;
        end_sessions(tx.conn, email)?;
        tx.commit()
    }

    /// Registers (or re-registers) `device` for `member`, bound to `actor`, and
    /// opens a session for it, all in one transaction. Refuses a device id that
    /// belongs to another member or kind, and an actor bound to another device.
    pub fn open_session(
        &mut self,
        member: &MemberRecord,
        new: &NewSession<'_>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let NewSession {
            device,
            kind,
            actor,
            token_hash,
            expires_at,
        } = *new;
        let tx = self.write()?;
        match device_row(tx.conn, device)? {
            Some(known) if known.email != member.email || known.kind != kind => {
                return Err(StoreError::DeviceTaken {
                    device: device.clone(),
                });
            }
            Some(_) => {}
            None => {
                tx.conn
                    .prepare_cached(
                        "INSERT INTO devices (device_id, tenant_id, email, kind, registered_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        device.as_str(),
                        member.tenant.as_str(),
                        member.email.as_str(),
                        kind.as_str(),
                        now.as_millis()
                    ])?;
            }
        }
        let bound: Option<String> = tx
            .conn
            .prepare_cached("SELECT device_id FROM actors WHERE actor = ?1")?
            .query_row(params![actor], |r| r.get(0))
            .optional()?;
        match bound {
            Some(other) if other != device.as_str() => {
                return Err(StoreError::ActorTaken {
                    actor: actor.to_owned(),
                });
            }
            Some(_) => {}
            None => {
                tx.conn
                    .prepare_cached("INSERT INTO actors (actor, device_id) VALUES (?1, ?2)")?
                    .execute(params![actor, device.as_str()])?;
            }
        }
        // Expired sessions are of no use to anyone: purged at every login. And a
        // member keeps at most MAX_SESSIONS_PER_MEMBER: a new one ends the oldest.
        tx.conn
            .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?
            .execute(params![now.as_millis()])?;
        tx.conn
            .prepare_cached(
                "DELETE FROM sessions WHERE email = ?1 AND token_hash NOT IN
                 (SELECT token_hash FROM sessions WHERE email = ?1
                  ORDER BY expires_at DESC, token_hash LIMIT ?2)",
            )?
            .execute(params![
                member.email.as_str(),
                MAX_SESSIONS_PER_MEMBER as i64 - 1
            ])?;
        tx.conn.prepare_cached("INSERT INTO sessions (token_hash, device_id, email, expires_at) VALUES (?1, ?2, ?3, ?4)")?.execute(params![token_hash, device.as_str(), member.email.as_str(), expires_at.as_millis()])?;
        tx.commit()
    }

    /// The session whose token hashes to `token_hash`, if it exists (expired or
    /// not: the caller compares `expires_at` with its clock).
    pub fn session(&self, token_hash: &[u8]) -> Result<Option<SessionRecord>, StoreError> {
        let row: Option<(String, String, i64)> = self
            .db()
            .prepare_cached(
                "SELECT device_id, email, expires_at FROM sessions WHERE token_hash = ?1",
            )?
            .query_row(params![token_hash], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((device_id, email, expires_at)) = row else {
            return Ok(None);
        };
        let device_id = DeviceId::new(device_id).map_err(|_| bad_row("device id"))?;
        let email = UserId::new(email).map_err(|_| bad_row("email"))?;
        let (Some(device), Some(member)) = (
            device_row(&self.conn, &device_id)?,
            member(&self.conn, &email)?,
        ) else {
            return Ok(None);
        };
        Ok(Some(SessionRecord {
            device,
            member,
            expires_at: Timestamp::from_millis(expires_at),
        }))
    }

    /// Ends the session whose token hashes to `token_hash` (a logout); whether
    /// there was one.
    pub fn end_session(&mut self, token_hash: &[u8]) -> Result<bool, StoreError> {
        let ended = self
            .db()
            .prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
            .execute(params![token_hash])?;
        Ok(ended > 0)
    }

    /// Deletes expired sessions; returns how many.
    pub fn purge_sessions(&mut self, now: Timestamp) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?
            .execute(params![now.as_millis()])?)
    }
}

/// Account reads, on the store or inside a write.
pub trait AccountQueries: Read {
    /// Whether the tenant restricts user-role members to their assigned customers.
    fn assignee_visibility(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        self.db()
            .prepare_cached("SELECT assignee_visibility FROM tenants WHERE tenant_id = ?1")?
            .query_row(params![tenant.as_str()], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::UnknownTenant {
                tenant: tenant.clone(),
            })
    }

    /// A registered device.
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        device_row(self.db(), id)
    }

    /// The member's devices, by id.
    fn devices_of(&self, email: &UserId) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut stmt = self
            .db()
            .prepare_cached("SELECT device_id FROM devices WHERE email = ?1 ORDER BY device_id")?;
        let ids = stmt
            .query_map(params![email.as_str()], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let id = DeviceId::new(id).map_err(|_| bad_row("device id"))?;
            if let Some(d) = device_row(self.db(), &id)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The device an Automerge actor (hex) is bound to.
    fn device_of_actor(&self, actor: &str) -> Result<Option<DeviceId>, StoreError> {
        let id: Option<String> = self
            .db()
            .prepare_cached("SELECT device_id FROM actors WHERE actor = ?1")?
            .query_row(params![actor], |r| r.get(0))
            .optional()?;
        id.map(|id| DeviceId::new(id).map_err(|_| bad_row("device id")))
            .transpose()
    }
}

impl<T: Read + ?Sized> AccountQueries for T {}

fn insert_member(conn: &Connection, m: &MemberRecord, now: Timestamp) -> Result<(), StoreError> {
    let exists: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM members WHERE email = ?1)")?
        .query_row(params![m.email.as_str()], |r| r.get(0))?;
    if exists {
        return Err(StoreError::MemberExists {
            email: m.email.clone(),
        });
    }
    conn.prepare_cached(
        "INSERT INTO members (email, tenant_id, password_hash, role, contract, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        m.email.as_str(),
        m.tenant.as_str(),
        m.password_hash,
        m.role.as_str(),
        m.contract,
        now.as_millis()
    ])?;
    Ok(())
}

fn update_member(
    conn: &Connection,
    tenant: &TenantId,
    email: &UserId,
    column: &'static str,
    value: &dyn rusqlite::ToSql,
) -> Result<(), StoreError> {
    // `column` is one of this module's constants, never input.
    let sql = format!("UPDATE members SET {column} = ?3 WHERE tenant_id = ?1 AND email = ?2");
    let n = conn.execute(&sql, params![tenant.as_str(), email.as_str(), value])?;
    if n == 0 {
        return Err(StoreError::UnknownMember {
            email: email.clone(),
        });
    }
    Ok(())
}

fn end_sessions(conn: &Connection, email: &UserId) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM sessions WHERE email = ?1")?
        .execute(params![email.as_str()])?;
    Ok(())
}
