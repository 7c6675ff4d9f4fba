//! End-to-end encryption (Olm/Megolm via vodozemac).
