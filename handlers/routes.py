"""The route table: each handlers module ends with `default_handlers`; the
application concatenates them. Adding an endpoint touches one module."""
from __future__ import annotations

from handlers import accounts, admin, chat, docs, health, media, metrics, users
from handlers import agents, appointments, contracts, notifications, properties  # [listings]
from handlers import categories  # [categories]
from handlers import inquiries  # [leads]
from handlers import analytics  # [analytics]
from handlers import builders  # [builders]
from handlers import bookings  # [builders] bookings, installments, construction progress and updates
from handlers import builder_models  # [builders] projects' 3D models (glb, gltf, usdz)
from handlers import change_requests  # [builders] change requests on bookings
from handlers import payments  # [payments]
from handlers import enhancement  # [enhancement] enhance listing images; the enhancement service's webhook
from handlers import jobs  # [jobs]
from handlers import devices  # [push]
from handlers import events_stream  # [realtime] the events as Server-Sent Events (the socket's fallback)
from handlers import realtime  # [realtime] presence on request, announcements, disconnect
from handlers import events  # [realtime] the event stream's REST replay
from handlers import chat_manage  # [chat] mute, archive, search
from handlers import chat_attachments  # [attachments] chat attachments: upload, signed downloads
from handlers import chat_edits  # [edits] edit and delete messages
from handlers import unsubscribe  # [reminders] the emails' one-click unsubscribe link
from handlers import blocks  # [blocks] block and unblock users
from handlers import moderation  # [moderation] reports and the moderators' queue
from handlers import admin_settings  # [settings] runtime settings, their audit, the public status
from handlers import saved_searches  # [saved searches] users' saved searches and their alert modes
from handlers import guided_search  # [guided search] the three questions and the ranked answers
from handlers import wallet  # [wallet] balances, entries, refunds, the ledger audit
from handlers import promotions  # [promotions] featured listings and bumps, paid from the wallet

MODULES = [health, metrics, accounts, users, admin, media, chat, chat_attachments, properties, guided_search, agents, appointments, contracts, notifications, builders, bookings, builder_models, change_requests, categories, inquiries, analytics, jobs, payments, enhancement, devices, events, events_stream, realtime, chat_manage, chat_edits, unsubscribe, blocks, moderation, admin_settings, saved_searches, wallet, promotions, docs]


def all_routes(settings) -> list:
    routes = []
    for module in MODULES:
        routes.extend(module.default_handlers)
    return routes
