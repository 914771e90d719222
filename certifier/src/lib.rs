//! tashkent-certifier: GSI certification and the global commit order.
