"""msmtp-compatible accounts: msmtprc parsing, account selection and --pretend output."""
