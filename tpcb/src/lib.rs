//! tashkent-tpcb: AllUpdates and TPC-B drivers and their reports.
