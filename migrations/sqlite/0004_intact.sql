-- The intact rate (完好率): online points whose picture passes video quality diagnosis.
-- NULL in samples taken before it existed (read as the online count).
ALTER TABLE rate_samples ADD COLUMN intact BIGINT;
