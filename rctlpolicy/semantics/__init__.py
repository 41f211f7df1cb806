"""What FreeBSD accepts: rctl(8)'s rewriting of an operand, then the kernel's checks.

`check.check_rule` and `check.check_filter` take the fields cut by `rctlpolicy.grammar` and
return the rule (or filter) FreeBSD would hold, or problems that say which field is wrong,
why, and what was probably meant. The first error in a result is the one FreeBSD itself
reports (same order, same errno); further problems are extra help for people (other fields,
warnings and notes).

Layers (spec section 1): `Layer.RCTL8` is what an administrator types (subject aliases, user
names, expand_number(3) suffixes) and `Layer.KERNEL` is the raw system-call string.

The package follows FreeBSD's own steps, one module each:

- `problems`: what a check reports (`Problem`: a field, a registered code, the errno).
- `resolver`: the host look-ups rctl(8) and the kernel make (`Resolver`, `OFFLINE`).
- `rewrite`: rctl(8)'s rewriting of an operand (usr.bin/rctl/rctl.c:expand_rule), and the
  string it then sends (`sent_text`).
- `kernel`: the kernel's parse and add checks (kern_rctl.c:rctl_string_to_rule,
  rctl_rule_add).
- `suggest`: the vocabularies, and "did you mean" for words people borrow from elsewhere.
- `advice`: warnings and notes on rules FreeBSD accepts but that surprise.
- `check`: the entry points, running the steps in FreeBSD's order.
- `canonical`: reading back what the kernel prints, without the grammar.
"""
