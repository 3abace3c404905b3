//! Idempotency and de-dup records in Redis: one record per key for the whole fleet, so that a
//! retry landing on another replica finds what the first attempt did. `begin` is atomic (a script:
//! read, or write if absent), and every record expires with its TTL.
//!
//! While Redis fails, the operation fails (creates are refused: without the shared record a
//! duplicate purchase cannot be ruled out), unless `creates_when_down = "local"` gave this store
//! the replica's own records to fall back to.

use std::sync::Arc;
use std::time::Duration;

use crate::fleet::codec::{decode_record, encode_record};
use crate::fleet::{Fleet, px};
use crate::protect::records::{Begin, MemoryRecords, Record, RecordStore, Stored, in_flight};
use crate::svc::BoxFuture;

/// Returns the existing value, or writes `ARGV[1]` with a `PX` of `ARGV[2]` and returns nothing.
const BEGIN: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"#;

pub struct RedisRecords(Arc<Inner>);

struct Inner {
    fleet: Arc<Fleet>,
    begin: redis::Script,
    local: Option<MemoryRecords>,
}

impl RedisRecords {
    pub fn new(fleet: Arc<Fleet>, fall_back_to_local: bool) -> RedisRecords {
        RedisRecords(Arc::new(Inner {
            fleet,
            begin: redis::Script::new(BEGIN),
            local: fall_back_to_local.then(MemoryRecords::default),
        }))
    }

    fn key(&self, key: &str) -> String {
        self.0.fleet.key(&["rec", key])
    }
}

impl RecordStore for RedisRecords {
    fn begin(&self, key: &str, fingerprint: &str, ttl: Duration) -> BoxFuture<Stored<Begin>> {
        let (rkey, key) = (self.key(key), key.to_string());
        let value = encode_record(&in_flight(fingerprint, ttl));
        let fingerprint = fingerprint.to_string();
        let this = self.0.clone();
        Box::pin(async move {
            let mut inv = this.begin.key(&rkey);
            inv.arg(value).arg(px(ttl));
            let found: Result<Option<Vec<u8>>, _> = this
                .fleet
                .run("record_begin", |mut c| async move {
                    inv.invoke_async(&mut c).await
                })
                .await;
            match (found, &this.local) {
                (Ok(None), _) => Ok(Begin::Started),
                // An undecodable record (another version) is kept, never overwritten: a purchase
                // may stand behind it.
                (Ok(Some(b)), _) => Ok(decode_record(&b)
                    .map_or(Begin::Exists(in_flight(&fingerprint, ttl)), Begin::Exists)),
                (Err(_), Some(local)) => local.begin(&key, &fingerprint, ttl).await,
                (Err(e), None) => Err(e),
            }
        })
    }

    fn get(&self, key: &str) -> BoxFuture<Stored<Option<Record>>> {
        let (rkey, key) = (self.key(key), key.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let got: Result<Option<Vec<u8>>, _> = this
                .fleet
                .run("record_get", |mut c| async move {
                    redis::cmd("GET").arg(&rkey).query_async(&mut c).await
                })
                .await;
            match (got, &this.local) {
                (Ok(v), _) => Ok(v.and_then(|b| decode_record(&b))),
                (Err(_), Some(local)) => local.get(&key).await,
                (Err(e), None) => Err(e),
            }
        })
    }

    fn set(&self, key: &str, record: Record) -> BoxFuture<Stored<()>> {
        let (rkey, key) = (self.key(key), key.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let value = encode_record(&record);
            let ttl = px(record.ttl);
            let done: Result<(), _> = this
                .fleet
                .run("record_set", |mut c| async move {
                    redis::cmd("SET")
                        .arg(&rkey)
                        .arg(value)
                        .arg("PX")
                        .arg(ttl)
                        .query_async(&mut c)
                        .await
                })
                .await;
            match (done, &this.local) {
                (Ok(()), _) => Ok(()),
                (Err(_), Some(local)) => local.set(&key, record).await,
                (Err(e), None) => Err(e),
            }
        })
    }

    fn remove(&self, key: &str) -> BoxFuture<Stored<()>> {
        let (rkey, key) = (self.key(key), key.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let done: Result<(), _> = this
                .fleet
                .run("record_remove", |mut c| async move {
                    redis::cmd("DEL").arg(&rkey).query_async(&mut c).await
                })
                .await;
            if let Some(local) = &this.local {
                // What was recorded locally while Redis was down goes too.
                local.remove(&key).await?;
                return Ok(());
            }
            done
        })
    }
}
