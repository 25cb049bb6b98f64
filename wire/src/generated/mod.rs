pub mod coremq_generated;
