//! corrald's library: everything of the daemon but its `main`, so the API can be tested
//! in-process.

pub mod api;
pub mod config;
pub mod console_ws;
pub mod copy;
pub mod daemon;
pub mod disks;
pub mod etag;
pub mod events;
pub mod exec_ws;
pub mod files;
pub mod filter;
pub mod idle_work;
pub mod images;
pub mod images_api;
pub mod instances;
pub mod log_events;
pub mod metadata_api;
pub mod metrics;
pub mod networks;
pub mod networks_api;
pub mod nics;
pub mod operations;
pub mod paths;
pub mod pools;
pub mod pools_api;
pub mod preseed;
pub mod profiles_api;
pub mod proxies;
pub mod running;
pub mod snapshots;
pub mod storage;
pub mod templates;
pub mod volumes;
pub mod volumes_api;
