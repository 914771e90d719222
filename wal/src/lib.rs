//! tashkent-wal: the certifier's write-ahead log (see issue "wal/").
