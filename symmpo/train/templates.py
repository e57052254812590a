"""Conversation templates: the text around a question and an answer, and which tokens are scored.

Two templates (``--template``):

- ``llava_v1`` (``ReleasedTemplate``, the default): the conversation the released SymMPO
  training and its ``logps`` column use, LLaVA-1.5's ``v1``::

      {system} USER: <image>\\n{question} ASSISTANT: {answer}</s>

  with ``system`` = "A chat between a curious human and an artificial intelligence assistant.
  The assistant gives helpful, detailed, and polite answers to the human's questions." The text
  is tokenized in pieces split at ``<image>``: each piece on its own with the tokenizer's
  special tokens (so a Llama tokenizer puts its BOS and its leading-space marker on each), the
  BOS of every piece after the first dropped, one image token between them.

  Targets follow the released rule: the first ``n - 1`` tokens are masked (label -100), where
  ``n`` is the length of the instruction ``{system} USER: <image>\\n{question} ASSISTANT: ``
  (its trailing space included) tokenized the same way; every later token is scored, ``</s>``
  included. Usually that masks exactly the tokens up to the ``:`` of ``ASSISTANT:``; when the
  tokenizer cannot fold the space into the answer's first token (an answer starting with a
  digit, a newline, an emoji or a CJK character under Llama's tokenizer) that space token is
  the first target, as it was in the released training. If the conversation does not
  tokenize to the instruction-less-answer split the rule assumes (BOS + the text before
  ``</s>`` + ``</s>``), the released code masks every label; here that is a ``TemplateError``.

- ``processor`` (``ChatTemplate``): the checkpoint processor's own chat template
  (``apply_chat_template`` with a user turn holding the image and the question, then the
  assistant's answer). The prompt's tokens (the user turn and the generation prompt) are masked;
  every token after them is scored, and the end-of-sequence token is appended when the
  template does not write one, so the model learns where to stop.

``encode`` returns ``(ids, labels)`` with exactly one image token id where the image goes (the
collator expands it to the vision tower's features, then truncates).
"""

from __future__ import annotations

from dataclasses import dataclass

TEMPLATES = ("llava_v1", "processor")
IMAGE = "<image>"
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


class TemplateError(ValueError):
    """A question and answer the template cannot turn into a scored sequence."""


@dataclass(frozen=True)
class ReleasedTemplate:
    """LLaVA-1.5's ``v1`` conversation and the released preprocessing's targets."""

    name: str = "llava_v1"
    system: str = SYSTEM
    #: Text that splits the conversation into turns and roles; a record holding one is refused
    #: (the released preprocessing would mask every label of its sequences).
    separators: tuple[str, ...] = ("</s>", "ASSISTANT:", "USER:")

    def identity(self) -> str:
        """What the reference log-probs depend on in this template (the cache key's part)."""
        return f"{self.name}|{self.system}|{self.separators}"

    def prompt_text(self, question: str, image: bool = True) -> str:
        placed = f"{IMAGE}\n" if image else ""
        return f"{self.system} USER: {placed}{question} ASSISTANT:"

    def tokenize(self, tokenizer, text: str, image_token_id: int) -> list[int]:
        """Tokens of ``text`` with one ``image_token_id`` per ``<image>``: each piece between
        them tokenized alone (special tokens added), later pieces' BOS dropped."""
        bos = tokenizer.bos_token_id
        ids: list[int] = []
        for i, piece in enumerate(text.split(IMAGE)):
            tokens = tokenizer(piece)["input_ids"]
            if i > 0:
                if tokens and tokens[0] == bos:
                    tokens = tokens[1:]
                ids.append(image_token_id)
            ids += tokens
        return ids

    def prompt_ids(self, tokenizer, question: str, image_token_id: int, image=True) -> list[int]:
        """The generation prompt: everything up to ``ASSISTANT:`` (``image=False``: a
        text-only question, as the released evaluation asks HallusionBench's)."""
        return self.tokenize(tokenizer, self.prompt_text(question, image), image_token_id)

    def encode(self, tokenizer, question: str, answer: str, image_token_id: int):
        """(ids, labels) of one conversation; TemplateError where the released rule would mask
        every label."""
        body = f"{self.prompt_text(question)} {answer}"
        ids = self.tokenize(tokenizer, body + "</s>", image_token_id)
        instruction = self.tokenize(tokenizer, self.prompt_text(question) + " ", image_token_id)
        expected = 1 + len(self.tokenize(tokenizer, body, image_token_id))
        if expected != len(ids):
            raise TemplateError(
                f"tokenizes to {len(ids)} tokens where the released preprocessing expects "
                f"{expected} (its text before </s> plus one); it would mask every label"
            )
        masked = len(instruction) - 1
        return ids, [-100] * masked + ids[masked:]


@dataclass(frozen=True)
class ChatTemplate:
    """The tokenizer's (the checkpoint processor's) chat template."""

    chat_template: str
    name: str = "processor"
    separators: tuple[str, ...] = ()

    def identity(self) -> str:
        return f"{self.name}|{self.chat_template}"

    @staticmethod
    def messages(question: str, answer: str | None = None, image: bool = True) -> list[dict]:
        items = [{"type": "image"}] if image else []
        user = {"role": "user", "content": [*items, {"type": "text", "text": question}]}
        if answer is None:
            return [user]
        return [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]

    def render(self, tokenizer, messages, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            add_generation_prompt=generation_prompt,
            tokenize=False,
        )

    def tokenize(self, tokenizer, text: str, image_token_id: int, images: int = 1) -> list[int]:
        """Tokens of rendered text; BOS added by the tokenizer unless the text starts with it."""
        bos = tokenizer.bos_token
        ids = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]
        found = ids.count(image_token_id)
        if found != images:
            raise TemplateError(
                f"the chat template's text holds {found} image tokens, not {images}; does the "
                "template write the tokenizer's image token for an image item?"
            )
        return ids

    def prompt_ids(self, tokenizer, question: str, image_token_id: int, image=True) -> list[int]:
        messages = self.messages(question, image=image)
        text = self.render(tokenizer, messages, generation_prompt=True)
        return self.tokenize(tokenizer, text, image_token_id, images=int(image))

    def encode(self, tokenizer, question: str, answer: str, image_token_id: int):
        prompt = self.prompt_ids(tokenizer, question, image_token_id)
        text = self.render(tokenizer, self.messages(question, answer), generation_prompt=False)
        ids = self.tokenize(tokenizer, text, image_token_id)
        if ids[: len(prompt)] != prompt:
            raise TemplateError(
                "the chat template's prompt (user turn and generation prompt) does not "
                "tokenize to a prefix of the whole conversation"
            )
        if not ids or ids[-1] != tokenizer.eos_token_id:
            ids = [*ids, tokenizer.eos_token_id]
        return ids, [-100] * len(prompt) + ids[len(prompt) :]


def get_template(name: str, tokenizer, processor=None):
    """The template called ``name`` (``--template``) for this tokenizer (and processor)."""
    if name == "llava_v1":
        return ReleasedTemplate()
    if name == "processor":
        chat = getattr(processor, "chat_template", None) or getattr(
            tokenizer, "chat_template", None
        )
        if not chat:
            raise ValueError(
                "--template processor: the checkpoint's processor and tokenizer have no chat "
                "template; use --template llava_v1"
            )
        return ChatTemplate(chat)
    raise ValueError(f"--template must be one of {TEMPLATES}, got {name!r}")
