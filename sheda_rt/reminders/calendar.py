"""The `.ics` attached to viewing reminders (RFC 5545, built with the `icalendar` library).

One VEVENT per appointment, UID `appointment-<id>@<domain>`: calendars that imported an earlier
reminder update that event instead of adding a second one, and SEQUENCE (how many times the
viewing was rescheduled) tells them which version is newer."""
from __future__ import annotations

from datetime import datetime

from icalendar import Calendar, Event

from sheda_rt.mail.mailer import Attachment

PRODID = "-//Sheda RT//Viewing reminders//EN"


def viewing_ics(appointment: dict, *, location: str | None, now: datetime, domain: str) -> Attachment:
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", "PUBLISH")
    event = Event()
    event.add("uid", f"appointment-{appointment['_id']}@{domain}")
    event.add("dtstamp", now)
    event.add("dtstart", appointment["scheduled_at"])
    event.add("dtend", appointment["ends_at"])
    event.add("sequence", int(appointment.get("reschedules", 0)))
    event.add("status", "CONFIRMED")
    event.add("summary", f"Viewing: {appointment.get('property_title') or 'property'}")
    if location:
        event.add("location", location)
    event.add("description", f"Viewing of “{appointment.get('property_title')}” (appointment {appointment['_id']}).")
    cal.add_component(event)
    return Attachment(filename="viewing.ics", content=cal.to_ical(), mime_type="text/calendar; method=PUBLISH")
