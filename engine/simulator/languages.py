"""The simulator's languages: small lists of real, common words with each script's punctuation.

The lists lean on function words ("and", "is", "of"), which are what language identifiers key
on, so that closely related languages (Hindi, Marathi and Nepali; Arabic and Moroccan Arabic;
Russian, Ukrainian and Serbian) come out distinguishable. ``find_language`` raises nothing: it
returns None for a name or code it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ENGLISH", "LANGUAGES", "Language", "find_language"]


@dataclass(frozen=True, slots=True)
class Language:
    """One language: names and codes it answers to, its script, words and punctuation."""

    name: str  # English name, as prompts write it after "Target language:"
    codes: tuple[str, ...]  # ISO 639-1 / 639-3 codes and other names, lower case
    script: str  # the Unicode script name of its letters, as unicodedata.name() starts
    words: tuple[str, ...]  # common words (an entry may hold two words, e.g. "por qué")
    asks: tuple[str, ...]  # question words that open a question
    tells: tuple[str, ...]  # imperative verbs that open (or, verb-final, close) an instruction
    stop: str = "."
    question: str = "?"
    comma: str = ","
    spaced: bool = True  # False for Chinese and Japanese: words are written without spaces
    verb_final: bool = False  # the imperative verb goes last (Japanese, Hindi, Turkish ...)
    question_open: str = ""  # "¿" for Spanish
    cased: bool = field(init=False)  # the script has upper case (Latin, Cyrillic, Greek)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cased", self.script in ("LATIN", "CYRILLIC", "GREEK"))

    @property
    def vocabulary(self) -> frozenset[str]:
        """Every single word the language may produce (multi-word entries split)."""
        return frozenset(
            w for entry in (*self.words, *self.asks, *self.tells) for w in entry.split()
        )


def _w(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split("|") if w.strip())


def _lang(
    name: str,
    codes: str,
    script: str,
    words: str,
    asks: str,
    tells: str,
    *,
    stop: str = ".",
    question: str = "?",
    comma: str = ",",
    spaced: bool = True,
    verb_final: bool = False,
    question_open: str = "",
) -> Language:
    return Language(
        name,
        _w(codes.lower()),
        script,
        _w(words),
        _w(asks),
        _w(tells),
        stop=stop,
        question=question,
        comma=comma,
        spaced=spaced,
        verb_final=verb_final,
        question_open=question_open,
    )


# Arabic-script languages share the Arabic question mark and comma; Hindi, Nepali, Bengali and
# Punjabi end sentences with the danda (Marathi, in modern use, with a full stop).
_AR_Q, _AR_C, _DANDA = "؟", "،", "।"

LANGUAGES: tuple[Language, ...] = (
    _lang(
        "English",
        "en|eng",
        "LATIN",
        "the|and|of|to|in|is|that|it|for|with|as|on|was|are|this|be|by|from|have|not|people|"
        "time|way|water|world|school|work|life|day|good|new|important|many|often|because|also|"
        "can|should|when|which|more|most|about|example|idea|question|answer|reason|simple|clear|"
        "each|other|first|small|city|family|history|help",
        "what|how|why|which",
        "explain|describe|write|compare",
    ),
    _lang(
        "Spanish",
        "es|spa|castilian|español",
        "LATIN",
        "el|la|los|las|de|que|y|en|un|una|es|por|con|para|no|se|su|más|como|pero|también|muy|"
        "cuando|porque|tiempo|vida|mundo|casa|agua|trabajo|ciudad|escuela|familia|gente|historia|"
        "día|año|bueno|nueva|importante|ejemplo|pregunta|respuesta|idea|siempre|todos|otro|cada|"
        "mejor|puede|hacer|tiene|donde|nosotros|del",
        "qué|cómo|por qué|cuál",
        "explica|describe|escribe|compara",
        question_open="¿",
    ),
    _lang(
        "French",
        "fr|fra|fre|français",
        "LATIN",
        "le|la|les|de|des|du|et|en|un|une|est|que|qui|dans|pour|pas|sur|avec|plus|par|mais|aussi|"
        "très|comme|nous|vous|ils|elle|temps|vie|monde|maison|eau|travail|ville|école|famille|"
        "histoire|jour|année|bon|nouvelle|important|exemple|question|réponse|idée|toujours|chaque|"
        "autre|peut|faire|parce que|aujourd'hui",
        "pourquoi|comment|quel|quelle",
        "explique|décris|écris|compare",
        question=" ?",
    ),
    _lang(
        "German",
        "de|deu|ger|deutsch",
        "LATIN",
        "der|die|das|und|ist|nicht|ein|eine|zu|mit|von|auf|für|sich|auch|es|den|dem|im|wir|sie|"
        "aber|wenn|oder|sehr|noch|nach|Zeit|Leben|Welt|Haus|Wasser|Arbeit|Stadt|Schule|Familie|"
        "Geschichte|Tag|Jahr|gut|neue|wichtig|Beispiel|Frage|Antwort|Idee|immer|jeder|andere|kann|"
        "machen|heute|weil|Menschen",
        "warum|wie|was|welche",
        "erkläre|beschreibe|schreibe|vergleiche",
    ),
    _lang(
        "Portuguese",
        "pt|por|português",
        "LATIN",
        "o|a|os|as|de|que|e|em|um|uma|é|por|com|para|não|se|seu|mais|como|mas|também|muito|"
        "quando|porque|tempo|vida|mundo|casa|água|trabalho|cidade|escola|família|pessoas|história|"
        "dia|ano|bom|nova|importante|exemplo|pergunta|resposta|ideia|sempre|todos|outro|cada|"
        "melhor|pode|fazer|tem|onde|você|são|do|da",
        "por que|como|qual|o que",
        "explique|descreva|escreva|compare",
    ),
    _lang(
        "Italian",
        "it|ita|italiano",
        "LATIN",
        "il|la|di|che|e|è|un|una|in|per|non|con|si|sono|del|della|più|come|ma|anche|molto|quando|"
        "perché|tempo|vita|mondo|casa|acqua|lavoro|città|scuola|famiglia|persone|storia|giorno|"
        "anno|buono|nuova|importante|esempio|domanda|risposta|idea|sempre|tutti|altro|ogni|meglio|"
        "può|fare|ha|dove|questo|gli",
        "perché|come|quale|che cosa",
        "spiega|descrivi|scrivi|confronta",
    ),
    _lang(
        "Dutch",
        "nl|nld|dut|flemish|nederlands",
        "LATIN",
        "de|het|een|en|van|is|dat|niet|in|op|te|met|voor|zijn|er|maar|ook|als|bij|nog|wel|naar|"
        "kan|om|dan|heel|veel|tijd|leven|wereld|huis|water|werk|stad|school|familie|mensen|"
        "geschiedenis|dag|jaar|goed|nieuwe|belangrijk|voorbeeld|vraag|antwoord|idee|altijd|elke|"
        "andere|maken|vandaag|omdat|wij",
        "waarom|hoe|welke|wat",
        "beschrijf|schrijf|vergelijk|verklaar",
    ),
    _lang(
        "Swedish",
        "sv|swe|svenska",
        "LATIN",
        "och|i|att|det|som|en|på|är|av|för|med|till|den|har|de|inte|om|ett|han|men|vi|var|jag|"
        "kan|så|från|också|mycket|när|eftersom|tid|liv|världen|hus|vatten|arbete|stad|skola|"
        "familj|människor|historia|dag|år|bra|nya|viktigt|exempel|fråga|svar|idé|alltid|varje|"
        "andra|göra|idag",
        "varför|hur|vilken|vad",
        "förklara|beskriv|skriv|jämför",
    ),
    _lang(
        "Polish",
        "pl|pol|polski",
        "LATIN",
        "i|w|nie|się|na|to|jest|że|z|do|jak|ale|o|co|po|tak|od|za|przez|są|dla|czy|już|tylko|"
        "jego|bardzo|też|kiedy|ponieważ|czas|życie|świat|dom|woda|praca|miasto|szkoła|rodzina|"
        "ludzie|historia|dzień|rok|dobry|nowa|ważne|przykład|pytanie|odpowiedź|pomysł|zawsze|"
        "każdy|inny|może|robić|dzisiaj",
        "dlaczego|jak|który|co",
        "wyjaśnij|opisz|napisz|porównaj",
    ),
    _lang(
        "Turkish",
        "tr|tur|türkçe",
        "LATIN",
        "bir|ve|bu|da|de|için|ile|çok|ama|gibi|daha|en|olarak|var|yok|her|kadar|sonra|şey|zaman|"
        "hayat|dünya|ev|su|iş|şehir|okul|aile|insanlar|tarih|gün|yıl|iyi|yeni|önemli|örnek|soru|"
        "cevap|fikir|hep|başka|olabilir|yapmak|bugün|çünkü|büyük|küçük|güzel|ilk|benim|onların|"
        "değil|bunu",
        "neden|nasıl|hangi|ne",
        "açıkla|anlat|yaz|karşılaştır",
        verb_final=True,
    ),
    _lang(
        "Indonesian",
        "id|ind|bahasa indonesia",
        "LATIN",
        "yang|dan|di|ini|itu|dengan|untuk|tidak|dari|dalam|akan|pada|juga|saya|ke|karena|ada|"
        "bisa|orang|mereka|kita|sudah|lebih|sangat|atau|waktu|hidup|dunia|rumah|air|kerja|kota|"
        "sekolah|keluarga|sejarah|hari|tahun|baik|baru|penting|contoh|pertanyaan|jawaban|ide|"
        "selalu|setiap|lain|membuat|sekarang|banyak|besar|kecil",
        "mengapa|bagaimana|apa|kapan",
        "jelaskan|uraikan|tuliskan|bandingkan",
    ),
    _lang(
        "Swahili",
        "sw|swa|swh|kiswahili",
        "LATIN",
        "na|ya|wa|za|kwa|ni|katika|hii|hiyo|kuwa|lakini|pia|sana|kama|wakati|maisha|dunia|nyumba|"
        "maji|kazi|mji|shule|familia|watu|historia|siku|mwaka|nzuri|mpya|muhimu|mfano|swali|jibu|"
        "wazo|kila|mengine|kufanya|leo|kubwa|ndogo|mtoto|chakula|habari|rafiki|nchi|lugha|kitabu|"
        "zaidi|hapa|sisi|wao|yeye|mimi|tena",
        "kwa nini|jinsi gani|nini|lini",
        "eleza|andika|linganisha|fafanua",
    ),
    _lang(
        "Yoruba",
        "yo|yor|yorùbá",
        "LATIN",
        "àti|ni|ti|sí|fún|pẹ̀lú|kò|wà|jẹ́|ọjọ́|ọdún|ilé|omi|iṣẹ́|ìlú|ilé ìwé|ẹbí|ènìyàn|ìtàn|"
        "dáadáa|tuntun|pàtàkì|àpẹẹrẹ|ìbéèrè|ìdáhùn|gbogbo|mìíràn|ṣe|lónìí|nítorí|ńlá|kékeré|"
        "ọmọ|oúnjẹ|ìwé|èdè|orílẹ̀-èdè|ọ̀rẹ́|mo|wọn|òun|rẹ̀|yìí|náà|sì|tàbí|púpọ̀|àkókò|ayé|"
        "ìgbésí ayé",
        "kí ló dé|báwo|kí ni|èwo",
        "ṣàlàyé|kọ|ṣàpèjúwe|fi wé",
    ),
    _lang(
        "Hausa",
        "ha|hau",
        "LATIN",
        "da|a|na|ta|ba|ce|ne|shi|ita|su|mu|wannan|wani|wata|kuma|amma|don|saboda|lokaci|rayuwa|"
        "duniya|gida|ruwa|aiki|gari|makaranta|iyali|mutane|tarihi|rana|shekara|kyau|sabon|"
        "muhimmi|misali|tambaya|amsa|ra'ayi|kullum|kowane|sauran|yau|babba|ƙarami|yaro|abinci|"
        "littafi|harshe|ƙasa|aboki|sosai|ɗaya|yanzu",
        "me yasa|yaya|mene ne|wanne",
        "bayyana|rubuta|kwatanta|yi bayani",
    ),
    _lang(
        "Zulu",
        "zu|zul|isizulu",
        "LATIN",
        "futhi|kodwa|noma|ukuthi|uma|ngoba|lapho|kakhulu|kanye|nje|manje|namuhla|isikhathi|"
        "impilo|umhlaba|indlu|amanzi|umsebenzi|idolobha|isikole|umndeni|abantu|umlando|usuku|"
        "unyaka|kuhle|okusha|okubalulekile|isibonelo|umbuzo|impendulo|umqondo|njalo|wonke|enye|"
        "ukwenza|omkhulu|omncane|ingane|ukudla|incwadi|ulimi|izwe|umngane|mina|thina|bona|yena|"
        "lokhu|kunzima|ngiyabonga",
        "kungani|kanjani|yini|yiliphi",
        "chaza|bhala|qhathanisa|landisa",
    ),
    _lang(
        "Wolof",
        "wo|wol",
        "LATIN",
        "ak|ci|ñu|nga|dafa|dañu|dañuy|nekk|dem|ñëw|waaye|ndax|ngir|nit|jamono|dund|àddina|kër|"
        "ndox|liggéey|dëkk|bés|baax|bees|laaj|tontu|xalaat|bépp|beneen|tey|leegi|ndaw|xale|lekk|"
        "téere|làkk|réew|xarit|moom|lool|jàng|xam|bëgg|dégg|wax|jëf|gën|benn|lépp|jëkk|jërëjëf|"
        "bokk|ëllëg|démb|guddi|jigéen|góor|yaay|baay|ceeb|jën|waxtaan|dinaa|damay",
        "lu tax|naka|lan|ban",
        "leeral|bindal|méngaleel|waxal",
    ),
    _lang(
        "Somali",
        "so|som|soomaali",
        "LATIN",
        "iyo|oo|ku|ka|u|waa|ma|ah|in|la|ay|uu|wax|aad|laakiin|sababtoo ah|sidoo kale|waqti|nolol|"
        "adduunka|guri|biyo|shaqo|magaalo|dugsi|qoys|dadka|taariikh|maalin|sannad|wanaagsan|cusub|"
        "muhiim|tusaale|su'aal|jawaab|fikrad|kasta|kale|maanta|weyn|yar|ilmo|cunto|buug|luqad|"
        "dal|saaxiib|aniga|annaga|iyaga|isaga|badan",
        "maxay|sidee|waa maxay|kee",
        "sharax|qor|isbarbar dhig|faahfaahi",
    ),
    _lang(
        "Vietnamese",
        "vi|vie|tiếng việt",
        "LATIN",
        "và|của|là|có|không|những|các|một|được|trong|cho|với|người|này|đã|để|khi|thì|cũng|rất|"
        "nhưng|vì|nhiều|thời gian|cuộc sống|thế giới|nhà|nước|công việc|thành phố|trường học|"
        "gia đình|lịch sử|ngày|năm|tốt|mới|quan trọng|ví dụ|câu hỏi|câu trả lời|ý tưởng|luôn|"
        "mỗi|khác|làm|hôm nay|lớn|nhỏ|trẻ em|ăn|sách|ngôn ngữ|đất nước|bạn bè|tôi|chúng ta|họ",
        "tại sao|như thế nào|cái gì|khi nào",
        "giải thích|mô tả|viết|so sánh",
    ),
    _lang(
        "Finnish",
        "fi|fin|suomi",
        "LATIN",
        "ja|on|ei|se|että|oli|ovat|kun|mutta|myös|niin|kuin|hän|me|he|minä|sinä|tämä|joka|jos|"
        "sitten|vain|hyvin|paljon|aika|elämä|maailma|talo|vesi|työ|kaupunki|koulu|perhe|ihmiset|"
        "historia|päivä|vuosi|hyvä|uusi|tärkeä|esimerkki|kysymys|vastaus|idea|aina|jokainen|muu|"
        "tehdä|tänään|koska|suuri|pieni|lapsi|ruoka|kirja|kieli|maa|ystävä",
        "miksi|miten|mikä|milloin",
        "selitä|kuvaile|kirjoita|vertaa",
    ),
    _lang(
        "Haitian Creole",
        "ht|hat|haitian|kreyòl|kreyol|haitian kreyol|kreyòl ayisyen",
        "LATIN",
        "mwen|ou|li|nou|yo|se|nan|pou|ak|pa|gen|ki|sa|te|ap|men|tou|anpil|lè|paske|konsa|tan|"
        "lavi|mond|kay|dlo|travay|vil|lekòl|fanmi|moun|istwa|jou|ane|bon|nouvo|enpòtan|egzanp|"
        "kesyon|repons|lide|toujou|chak|lòt|fè|jodi a|gwo|piti|timoun|manje|liv|lang|peyi|zanmi|"
        "kounye a|bagay",
        "poukisa|kijan|kisa|kilè",
        "eksplike|dekri|ekri|konpare",
    ),
    _lang(
        "Russian",
        "ru|rus|русский",
        "CYRILLIC",
        "и|в|не|на|что|с|он|как|это|по|но|они|мы|к|у|из|за|так|же|от|все|она|был|для|или|о|"
        "когда|потому что|очень|тоже|время|жизнь|мир|дом|вода|работа|город|школа|семья|люди|"
        "история|день|год|хороший|новый|важно|пример|вопрос|ответ|идея|всегда|каждый|другой|"
        "делать|сегодня|большой|маленький|ребёнок|книга|язык|страна|друг",
        "почему|как|какой|что",
        "объясните|опишите|напишите|сравните",
    ),
    _lang(
        "Ukrainian",
        "uk|ukr|українська",
        "CYRILLIC",
        "і|в|не|на|що|з|він|як|це|але|вони|ми|до|у|від|за|так|все|вона|був|для|або|про|коли|"
        "тому що|дуже|також|час|життя|світ|будинок|вода|робота|місто|школа|родина|люди|історія|"
        "день|рік|добрий|новий|важливо|приклад|питання|відповідь|ідея|завжди|кожен|інший|"
        "робити|сьогодні|великий|маленький|дитина|книжка|мова|країна|друг|її|їх|є",
        "чому|як|який|що",
        "поясніть|опишіть|напишіть|порівняйте",
    ),
    _lang(
        "Serbian (Cyrillic)",
        "sr|srp|serbian|sr-cyrl|српски",
        "CYRILLIC",
        "и|у|је|да|не|на|се|за|са|од|то|као|али|што|су|ће|био|они|ми|ја|ти|он|она|када|јер|"
        "веома|такође|време|живот|свет|кућа|вода|посао|град|школа|породица|људи|историја|дан|"
        "година|добар|нови|важно|пример|питање|одговор|идеја|увек|сваки|други|радити|данас|"
        "велики|мали|дете|књига|језик|земља|пријатељ|њихов|љубав|хвала",
        "зашто|како|који|шта",
        "објасни|опиши|напиши|упореди",
    ),
    _lang(
        "Arabic",
        "ar|ara|arb|standard arabic|modern standard arabic|العربية",
        "ARABIC",
        "في|من|على|إلى|أن|عن|مع|هذا|هذه|التي|الذي|كان|لا|ما|هو|هي|نحن|هم|كل|بعض|أو|لكن|أيضا|"
        "جدا|عندما|لأن|الوقت|الحياة|العالم|البيت|الماء|العمل|المدينة|المدرسة|الأسرة|الناس|"
        "التاريخ|اليوم|السنة|جيد|جديد|مهم|مثال|سؤال|جواب|فكرة|دائما|آخر|يمكن|يجب|كبير|صغير|"
        "الطفل|الطعام|الكتاب|اللغة|البلد|الصديق|قد",
        "لماذا|كيف|ما هو|أي",
        "اشرح|صف|اكتب|قارن",
        question=_AR_Q,
        comma=_AR_C,
    ),
    _lang(
        "Persian",
        "fa|fas|per|pes|farsi|iranian persian|western persian|فارسی",
        "ARABIC",
        "و|در|به|از|که|این|را|با|است|برای|آن|یک|می|شود|هم|تا|بر|ما|شما|آنها|او|من|اما|نیز|خیلی|"
        "وقتی|زیرا|زمان|زندگی|جهان|خانه|آب|کار|شهر|مدرسه|خانواده|مردم|تاریخ|روز|سال|خوب|جدید|"
        "مهم|مثال|پرسش|پاسخ|ایده|همیشه|هر|دیگر|کردن|امروز|بزرگ|کوچک|کودک|غذا|کتاب|زبان|کشور|"
        "دوست|هستند|بود",
        "چرا|چگونه|چه|کدام",
        "توضیح دهید|توصیف کنید|بنویسید|مقایسه کنید",
        verb_final=True,
        question=_AR_Q,
        comma=_AR_C,
    ),
    _lang(
        "Urdu",
        "ur|urd|اردو",
        "ARABIC",
        "اور|کے|کی|کا|میں|ہے|ہیں|کو|سے|یہ|وہ|نہیں|پر|بھی|ایک|تھا|کہ|لیے|ہم|آپ|لیکن|بہت|جب|"
        "کیونکہ|وقت|زندگی|دنیا|گھر|پانی|کام|شہر|اسکول|خاندان|لوگ|تاریخ|دن|سال|اچھا|نیا|اہم|"
        "مثال|سوال|جواب|خیال|ہمیشہ|ہر|دوسرا|کرنا|آج|بڑا|چھوٹا|بچہ|کھانا|کتاب|زبان|ملک|دوست",
        "کیوں|کیسے|کیا|کون سا",
        "وضاحت کریں|بیان کریں|لکھیں|موازنہ کریں",
        stop="۔",
        verb_final=True,
        question=_AR_Q,
        comma=_AR_C,
    ),
    _lang(
        "Moroccan Arabic",
        "ary|darija|moroccan darija|الدارجة",
        "ARABIC",
        "ديال|واش|بزاف|دابا|كاين|ماشي|مزيان|هاد|هادي|حنا|نتا|نتي|هوما|غادي|بغيت|خاصني|شي|والو|"
        "داكشي|عافاك|صافي|حيت|ولكن|الدار|الما|الخدمة|النهار|ديما|واحد|خويا|الدنيا|الماكلة|البلاد|"
        "صاحبي|دري|كنقول|كيبان|بلا|كنبغي|كيدير|شحال|دغيا|شوية|واخا|زوين|بحال|ديالي|ديالك|راه|"
        "غير|تما|ملي|باش|بلاصة|الحانوت|الفلوس|السيمانة|البارح|كنخدم|مكاينش",
        "علاش|كيفاش|شنو|فين",
        "شرح ليا|كتب|قارن|وصف",
        question=_AR_Q,
        comma=_AR_C,
    ),
    _lang(
        "Hindi",
        "hi|hin|हिन्दी|हिंदी",
        "DEVANAGARI",
        "और|का|के|की|में|है|हैं|को|से|यह|वह|नहीं|पर|भी|एक|था|कि|लिए|हम|आप|लेकिन|बहुत|जब|"
        "क्योंकि|समय|जीवन|दुनिया|घर|पानी|काम|शहर|विद्यालय|परिवार|लोग|इतिहास|दिन|साल|अच्छा|"
        "नया|महत्वपूर्ण|उदाहरण|सवाल|जवाब|विचार|हमेशा|हर|दूसरा|करना|आज|बड़ा|छोटा|बच्चा|खाना|"
        "किताब|भाषा|देश|दोस्त",
        "क्यों|कैसे|क्या|कौन सा",
        "समझाइए|बताइए|लिखिए|तुलना कीजिए",
        stop=_DANDA,
        verb_final=True,
    ),
    _lang(
        "Marathi",
        "mr|mar|मराठी",
        "DEVANAGARI",
        "आणि|आहे|आहेत|नाही|हे|ही|तो|ती|ते|या|त्या|मध्ये|साठी|पण|खूप|जेव्हा|कारण|आम्ही|तुम्ही|"
        "मी|एक|सुद्धा|वेळ|जीवन|जग|घर|पाणी|काम|शहर|शाळा|कुटुंब|लोक|इतिहास|दिवस|वर्ष|चांगले|"
        "नवीन|महत्त्वाचे|उदाहरण|प्रश्न|उत्तर|कल्पना|नेहमी|प्रत्येक|दुसरा|करणे|आज|मोठा|लहान|"
        "मूल|जेवण|पुस्तक|भाषा|देश|मित्र|होते|आपण|त्याच्या|आपल्या",
        "का|कसे|काय|कोणता",
        "स्पष्ट करा|वर्णन करा|लिहा|तुलना करा",
        verb_final=True,
    ),
    _lang(
        "Nepali",
        "ne|nep|npi|नेपाली",
        "DEVANAGARI",
        "र|छ|छन्|हो|होइन|यो|त्यो|को|मा|लाई|बाट|पनि|एक|थियो|कि|लागि|हामी|तपाईं|म|तर|धेरै|जब|"
        "किनभने|समय|जीवन|संसार|घर|पानी|काम|शहर|विद्यालय|परिवार|मान्छे|इतिहास|दिन|वर्ष|राम्रो|"
        "नयाँ|महत्त्वपूर्ण|उदाहरण|प्रश्न|उत्तर|विचार|सधैं|हरेक|अर्को|गर्नु|आज|ठूलो|सानो|बच्चा|"
        "खाना|किताब|भाषा|देश|साथी|हुन्छ|गर्छ",
        "किन|कसरी|के|कुन",
        "व्याख्या गर्नुहोस्|वर्णन गर्नुहोस्|लेख्नुहोस्|तुलना गर्नुहोस्",
        stop=_DANDA,
        verb_final=True,
    ),
    _lang(
        "Bengali",
        "bn|ben|bangla|বাংলা",
        "BENGALI",
        "এবং|ও|হয়|না|এই|সেই|যে|করে|থেকে|জন্য|সঙ্গে|কিন্তু|খুব|যখন|কারণ|আমরা|আপনি|আমি|তারা|"
        "একটি|ছিল|আছে|সময়|জীবন|পৃথিবী|বাড়ি|জল|কাজ|শহর|বিদ্যালয়|পরিবার|মানুষ|ইতিহাস|দিন|"
        "বছর|ভালো|নতুন|গুরুত্বপূর্ণ|উদাহরণ|প্রশ্ন|উত্তর|ধারণা|সবসময়|প্রতিটি|অন্য|করা|আজ|বড়|"
        "ছোট|শিশু|খাবার|বই|ভাষা|দেশ|বন্ধু|অনেক",
        "কেন|কীভাবে|কী|কোনটি",
        "ব্যাখ্যা করুন|বর্ণনা করুন|লিখুন|তুলনা করুন",
        stop=_DANDA,
        verb_final=True,
    ),
    _lang(
        "Tamil",
        "ta|tam|தமிழ்",
        "TAMIL",
        "மற்றும்|ஒரு|இது|அது|என்று|இல்லை|உள்ளது|ஆனால்|மிகவும்|போது|ஏனெனில்|நாங்கள்|நீங்கள்|நான்|"
        "அவர்கள்|அவர்|இருந்தது|நேரம்|வாழ்க்கை|உலகம்|வீடு|தண்ணீர்|வேலை|நகரம்|பள்ளி|குடும்பம்|"
        "மக்கள்|வரலாறு|நாள்|ஆண்டு|நல்ல|புதிய|முக்கியமான|உதாரணம்|கேள்வி|பதில்|யோசனை|எப்போதும்|"
        "ஒவ்வொரு|மற்ற|செய்ய|இன்று|பெரிய|சிறிய|குழந்தை|உணவு|புத்தகம்|மொழி|நாடு|நண்பர்|பல|கூட",
        "ஏன்|எப்படி|என்ன|எந்த",
        "விளக்குங்கள்|விவரியுங்கள்|எழுதுங்கள்|ஒப்பிடுங்கள்",
        verb_final=True,
    ),
    _lang(
        "Telugu",
        "te|tel|తెలుగు",
        "TELUGU",
        "మరియు|ఒక|ఇది|అది|అని|లేదు|ఉంది|కానీ|చాలా|ఎందుకంటే|మేము|మీరు|నేను|వారు|అతను|సమయం|"
        "జీవితం|ప్రపంచం|ఇల్లు|నీరు|పని|నగరం|పాఠశాల|కుటుంబం|ప్రజలు|చరిత్ర|రోజు|సంవత్సరం|మంచి|"
        "కొత్త|ముఖ్యమైన|ఉదాహరణ|ప్రశ్న|సమాధానం|ఆలోచన|ఎల్లప్పుడూ|ప్రతి|ఇతర|చేయడం|ఈరోజు|పెద్ద|"
        "చిన్న|పిల్లలు|ఆహారం|పుస్తకం|భాష|దేశం|స్నేహితుడు|కూడా|ఉన్నాయి",
        "ఎందుకు|ఎలా|ఏమిటి|ఏ",
        "వివరించండి|వర్ణించండి|రాయండి|పోల్చండి",
        verb_final=True,
    ),
    _lang(
        "Chinese",
        "zh|zho|chi|cmn|mandarin|mandarin chinese|chinese (simplified)|simplified chinese|中文",
        "CJK",
        "的|是|在|我们|他们|这个|那个|一个|和|也|很|不|有|没有|但是|因为|所以|时候|时间|生活|世界|"
        "家|水|工作|城市|学校|家庭|人们|历史|今天|年|好|新|重要|例子|问题|回答|想法|总是|每个|"
        "其他|做|大|小|孩子|食物|书|语言|国家|朋友|可以|应该|非常|已经|知道|学习",
        "为什么|如何|什么|哪个",
        "请解释|请描述|请写|请比较",
        stop="。",
        question="？",
        comma="，",
        spaced=False,
    ),
    _lang(
        "Japanese",
        "ja|jpn|日本語",
        "CJK",
        "の|は|が|を|に|で|と|も|です|ます|この|その|私たち|彼ら|とても|しかし|なぜなら|時間|生活|"
        "世界|家|水|仕事|都市|学校|家族|人々|歴史|今日|年|良い|新しい|重要な|例|質問|答え|考え|"
        "いつも|それぞれ|他の|する|大きい|小さい|子供|食べ物|本|言葉|国|友達|できる|あります|"
        "について|ことが|ような|そして",
        "なぜ|どのように|何|どの",
        "説明してください|書いてください|比較してください|述べてください",
        stop="。",
        question="？",
        comma="、",
        spaced=False,
        verb_final=True,
    ),
    _lang(
        "Korean",
        "ko|kor|한국어",
        "HANGUL",
        "그리고|하지만|그래서|이|그|저|것|수|있다|없다|하다|되다|우리는|그들은|나는|매우|때문에|"
        "시간|삶|세계|집|물|일|도시|학교|가족|사람들이|역사|오늘|년|좋은|새로운|중요한|예|질문|"
        "대답|생각|항상|각각|다른|큰|작은|아이|음식|책|언어|나라|친구|많은|학교에서|함께|정말|또한",
        "왜|어떻게|무엇|어느",
        "설명하세요|쓰세요|비교하세요|설명해 주세요",
        verb_final=True,
    ),
    _lang(
        "Greek",
        "el|ell|gre|modern greek|ελληνικά",
        "GREEK",
        "και|το|η|ο|να|του|της|τα|σε|με|για|είναι|δεν|που|θα|από|ένα|μια|αλλά|επίσης|πολύ|όταν|"
        "επειδή|χρόνος|ζωή|κόσμος|σπίτι|νερό|δουλειά|πόλη|σχολείο|οικογένεια|άνθρωποι|ιστορία|"
        "μέρα|χρόνια|καλό|νέο|σημαντικό|παράδειγμα|ερώτηση|απάντηση|ιδέα|πάντα|κάθε|άλλο|σήμερα|"
        "μεγάλο|μικρό|παιδί|φαγητό|βιβλίο|γλώσσα|χώρα|φίλος|εμείς|αυτοί",
        "γιατί|πώς|ποιο|τι",
        "εξήγησε|περίγραψε|γράψε|σύγκρινε",
        question=";",
    ),
    _lang(
        "Amharic",
        "am|amh|አማርኛ",
        "ETHIOPIC",
        "እና|ነው|ናቸው|አይደለም|ይህ|ያ|ውስጥ|ላይ|ጋር|ግን|በጣም|ምክንያቱም|እኛ|እርስዎ|እኔ|እነሱ|እሱ|እሷ|አንድ|"
        "ነበር|ጊዜ|ሕይወት|ዓለም|ቤት|ውሃ|ሥራ|ከተማ|ትምህርት ቤት|ቤተሰብ|ሰዎች|ታሪክ|ቀን|ዓመት|ጥሩ|አዲስ|"
        "አስፈላጊ|ምሳሌ|ጥያቄ|መልስ|ሀሳብ|ሁልጊዜ|እያንዳንዱ|ሌላ|ማድረግ|ዛሬ|ትልቅ|ትንሽ|ልጅ|ምግብ|መጽሐፍ|"
        "ቋንቋ|አገር|ጓደኛ|ብዙ|ደግሞ",
        "ለምን|እንዴት|ምን|የትኛው",
        "ያብራሩ|ይግለጹ|ይጻፉ|ያወዳድሩ",
        stop="።",
        comma="፣",
        verb_final=True,
    ),
    _lang(
        "Gujarati",
        "gu|guj|ગુજરાતી",
        "GUJARATI",
        "અને|છે|છો|નથી|આ|તે|માં|માટે|થી|પણ|ખૂબ|જ્યારે|કારણ કે|અમે|તમે|હું|તેઓ|એક|હતું|સમય|જીવન|"
        "દુનિયા|ઘર|પાણી|કામ|શહેર|શાળા|કુટુંબ|લોકો|ઇતિહાસ|દિવસ|વર્ષ|સારું|નવું|મહત્વપૂર્ણ|ઉદાહરણ|"
        "પ્રશ્ન|જવાબ|વિચાર|હંમેશા|દરેક|બીજું|કરવું|આજે|મોટું|નાનું|બાળક|ખોરાક|પુસ્તક|ભાષા|દેશ|"
        "મિત્ર|ઘણા|સાથે",
        "શા માટે|કેવી રીતે|શું|કયું",
        "સમજાવો|વર્ણન કરો|લખો|સરખામણી કરો",
        verb_final=True,
    ),
    _lang(
        "Punjabi (Gurmukhi)",
        "pa|pan|punjabi|panjabi|eastern panjabi|ਪੰਜਾਬੀ",
        "GURMUKHI",
        "ਅਤੇ|ਹੈ|ਹਨ|ਨਹੀਂ|ਇਹ|ਉਹ|ਵਿੱਚ|ਲਈ|ਤੋਂ|ਨਾਲ|ਪਰ|ਬਹੁਤ|ਜਦੋਂ|ਕਿਉਂਕਿ|ਅਸੀਂ|ਤੁਸੀਂ|ਮੈਂ|ਇੱਕ|ਸੀ|ਦਾ|ਦੇ|"
        "ਦੀ|ਸਮਾਂ|ਜੀਵਨ|ਦੁਨੀਆ|ਘਰ|ਪਾਣੀ|ਕੰਮ|ਸ਼ਹਿਰ|ਸਕੂਲ|ਪਰਿਵਾਰ|ਲੋਕ|ਇਤਿਹਾਸ|ਦਿਨ|ਸਾਲ|ਚੰਗਾ|ਨਵਾਂ|"
        "ਮਹੱਤਵਪੂਰਨ|ਉਦਾਹਰਨ|ਸਵਾਲ|ਜਵਾਬ|ਵਿਚਾਰ|ਹਮੇਸ਼ਾ|ਹਰ|ਦੂਜਾ|ਕਰਨਾ|ਅੱਜ|ਵੱਡਾ|ਛੋਟਾ|ਬੱਚਾ|ਖਾਣਾ|ਕਿਤਾਬ|"
        "ਭਾਸ਼ਾ|ਦੇਸ਼|ਦੋਸਤ|ਵੀ",
        "ਕਿਉਂ|ਕਿਵੇਂ|ਕੀ|ਕਿਹੜਾ",
        "ਸਮਝਾਓ|ਵਰਣਨ ਕਰੋ|ਲਿਖੋ|ਤੁਲਨਾ ਕਰੋ",
        stop=_DANDA,
        verb_final=True,
    ),
    _lang(
        "Sinhala",
        "si|sin|sinhalese|සිංහල",
        "SINHALA",
        "සහ|හා|වේ|නැත|මෙම|එම|ඒ|මේ|තුළ|සඳහා|සමඟ|නමුත්|ඉතා|විට|නිසා|අපි|ඔබ|මම|ඔවුන්|එක්|විය|"
        "කාලය|ජීවිතය|ලෝකය|නිවස|ජලය|වැඩ|නගරය|පාසල|පවුල|මිනිසුන්|ඉතිහාසය|දිනය|වසර|හොඳ|නව|"
        "වැදගත්|උදාහරණය|ප්‍රශ්නය|පිළිතුර|අදහස|සැමවිටම|සෑම|වෙනත්|කිරීම|අද|විශාල|කුඩා|ළමයා|ආහාර|"
        "පොත|භාෂාව|රට|මිතුරා|බොහෝ",
        "ඇයි|කෙසේද|කුමක්ද|කුමන",
        "පැහැදිලි කරන්න|විස්තර කරන්න|ලියන්න|සසඳන්න",
        verb_final=True,
    ),
)

ENGLISH = LANGUAGES[0]


def _index() -> dict[str, Language]:
    index: dict[str, Language] = {}
    for lang in LANGUAGES:
        for alias in (lang.name.lower(), *lang.codes):
            index.setdefault(alias, lang)
        base = lang.name.lower().split(" (", 1)[0]  # "serbian (cyrillic)" → "serbian"
        index.setdefault(base, lang)
    return index


_BY_NAME = _index()


def find_language(text: str) -> Language | None:
    """The language a prompt names: English name, ISO 639-1/639-3 code or a tag like ``pt-BR``."""
    key = " ".join(text.strip().strip(".\"'").lower().split())
    if not key:
        return None
    found = _BY_NAME.get(key)
    if found is None and " (" in key:
        # "Nepali (individual language)", "Swahili (macrolanguage)": the name before the note.
        found = _BY_NAME.get(key.split(" (", 1)[0])
    if found is None:
        # "zh-Hans", "pt_BR", "sr-Cyrl": the part before the subtag names the language.
        found = _BY_NAME.get(key.replace("_", "-").split("-", 1)[0])
    return found
