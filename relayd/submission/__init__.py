"""The submission side: relayd-sendmail's front end, msmtp's message rules, the store hand-off."""
