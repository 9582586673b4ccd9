//! Rules a host comparison cannot reach.
